"""Runs of a sweep on disk: the workdir a config trains in, and how far a workdir has got.

A run's workdir is `ROOT/<config name>-<hash>`, the hash taken over the canonical JSON of every
config field except `sbitnet.config.NON_RESULT_FIELDS` (how often to log, evaluate and checkpoint, where
caches and TensorBoard files go, the device mesh, rematerialisation and the loss chunk size: they
change speed, memory or file layout, and results only by float rounding). So the same config always
lands in the same workdir (a resubmitted sweep resumes it, also on another mesh), and any change to
the model, data, optimizer, sparsity, quantization, seed, steps or measurement (eval_batches,
stats_every) gets a fresh one. A new config field changes every hash: runs are never resumed under
a schema they were not started with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from sbitnet.config import NON_RESULT_FIELDS, Config, field_paths
from sbitnet.metrics import read_metrics

HASH_CHARS = 10
STATUSES = ("done", "partial", "new")


def config_hash(cfg: Config) -> str:
  """Short hex digest of the result-affecting config fields (sorted, canonical JSON)."""
  fields = {k: v for k, v in field_paths(cfg).items() if k not in NON_RESULT_FIELDS}
  canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


def workdir_name(cfg: Config) -> str:
  """`<config name>-<config_hash>`, the name made safe for a path."""
  return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', cfg.name)}-{config_hash(cfg)}"


def final_eval(records: list[dict], steps: int) -> dict | None:
  """The evaluation record of the final step (the last one, if a resumed run logged it twice)."""
  finals = [r for r in records if r["step"] >= steps and "val_ppl" in r]
  return finals[-1] if finals else None


def run_status(workdir: str, steps: int) -> tuple[str, int]:
  """(status, last logged step): 'done' once the final step's evaluation is in metrics.jsonl
  (training writes it just before the final checkpoint), 'partial' if the workdir holds anything
  of a run, 'new' otherwise."""
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return "new", 0
  try:
    records = read_metrics(workdir)
  except FileNotFoundError:
    return "partial", 0
  last = max((r["step"] for r in records), default=0)
  return ("done" if final_eval(records, steps) else "partial"), last
