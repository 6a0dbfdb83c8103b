"""Resume is exact, params-only init works, and a non-finite loss stops without harming checkpoints."""

import json

import numpy as np
import pytest

from sbitnet.checkpoint import Checkpointer
from sbitnet.config import ConfigError
from sbitnet.train.run import NonFiniteLoss, prepare, train_run
from tests.train.helpers import replace, tiny_config


def losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def train(cfg, workdir, stop_at=None, force_resume=False):
  return train_run(prepare(cfg, str(workdir), force_resume), stop_at)


def test_resume_is_bit_exact(tmp_path):
  cfg = tiny_config(str(tmp_path / "cache"), **{"train.steps": 8, "train.log_every": 1,
                                                "train.checkpoint_every": 4})
  train(cfg, tmp_path / "straight")
  train(cfg, tmp_path / "resumed", stop_at=4)
  train(cfg, tmp_path / "resumed")
  straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
  assert len(straight) == len(resumed) == 8
  assert straight == resumed

  # A resume may change how often it logs, but not the experiment (steps included: the LR
  # schedule and the dense-to-sparse switch are fractions of it).
  workdir = str(tmp_path / "resumed")
  prepare(replace(cfg, "train", log_every=2), workdir)
  with pytest.raises(ConfigError, match=r"train.steps: 8 -> 12"):
    prepare(replace(cfg, "train", steps=12), workdir)
  other = replace(replace(cfg, "sparsity", n=2, m=4), "quant", weights="none")
  with pytest.raises(ConfigError, match=r"another config.*quant.weights: 'ternary' -> 'none'; "
                                        r"sparsity.m: 8 -> 4; sparsity.n: 6 -> 2\..*--force_resume"):
    prepare(other, workdir)
  prepare(other, workdir, force_resume=True)
  with pytest.raises(ValueError, match=r"No checkpoint at step 5 .* it holds steps \[4, 8\]"):
    Checkpointer(str(tmp_path / "resumed" / "checkpoints"), read_only=True)._restore(5)


@pytest.mark.slow  # two runs; init_from is also covered by tests/interop/test_hf_convert.py
def test_params_only_init_from_another_run(tmp_path):
  cache = str(tmp_path / "cache")
  dense = replace(tiny_config(cache), "sparsity", n=0, m=0)
  train(dense, tmp_path / "dense")
  sparse = replace(tiny_config(cache), "train", init_from=str(tmp_path / "dense"), steps=2)
  summary = train(sparse, tmp_path / "sparse")
  assert summary["step"] == 2
  start = losses(tmp_path / "sparse")[0]
  fresh = losses(tmp_path / "dense")[0]
  assert start < fresh  # starts from trained weights, not from scratch


@pytest.mark.slow  # three training runs, one of them poisoned
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  cfg = tiny_config(str(tmp_path / "cache"), **{"train.checkpoint_every": 2})
  workdir = tmp_path / "run"
  train(cfg, workdir, stop_at=2)
  bad = replace(cfg, "train", lr=3e38, warmup_steps=0)
  with pytest.raises(NonFiniteLoss, match="last good checkpoint \\(step 2\\)"):
    train(bad, workdir, force_resume=True)
  checkpointer = Checkpointer(str(workdir / "checkpoints"), read_only=True)
  assert checkpointer.latest_step() == 2
  summary = train(cfg, workdir)
  assert summary["step"] == 4 and np.isfinite(summary["val_loss"])


def test_only_closed_loop_callbacks_of_a_failed_restore_are_silenced(monkeypatch):
  import sys
  import types

  from sbitnet import checkpoint
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoint._drop_late_read_callbacks()
  checkpoint._drop_late_read_callbacks()  # installed once, not stacked
  late = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  sys.unraisablehook(late)
  sys.unraisablehook(other)
  assert seen == [other]


def test_only_unretrieved_errors_of_orbax_reads_are_dropped_from_the_asyncio_log():
  import logging

  from sbitnet import checkpoint

  def record(msg, filename):
    try:  # an exception whose traceback ends in `filename`
      exec(compile("raise ValueError('bad read')", filename, "exec"))
    except ValueError as e:
      error = e
    return logging.LogRecord("asyncio", logging.ERROR, "", 0, msg, None,
                             (ValueError, error, error.__traceback__))

  keep = checkpoint._UnretrievedReadErrors().filter
  assert not keep(record("Task exception was never retrieved", "orbax/serialization.py"))
  assert keep(record("Task exception was never retrieved", "mine.py"))
  assert keep(record("Something else", "orbax/serialization.py"))
