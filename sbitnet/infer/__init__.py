"""Inference: sampling and generation from trained models."""
