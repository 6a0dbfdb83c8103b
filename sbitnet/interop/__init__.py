"""Interoperability: Hugging Face checkpoints (import/export) and lm-evaluation-harness scoring.

Nothing here fetches from a hub: every path is a local directory the user gives.
"""
