"""A tiny config shared by the training tests, as CLI flags and as a Config object."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from sbitnet.config import Config

TINY = {
    "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4, "model.n_kv_heads": 2,
    "model.d_ff": 128, "data.seq_len": 32, "data.path": "json/*.py", "train.batch_size": 8,
    "train.steps": 4, "train.eval_batches": 2, "train.log_every": 2, "train.stats_every": 2,
    "train.eval_every": 4, "train.checkpoint_every": 2, "train.warmup_steps": 1,
}


def tiny_config(cache_dir: str, **overrides) -> Config:
  cfg = Config(name="test")
  for path, value in {**TINY, "data.cache_dir": cache_dir, **overrides}.items():
    section, field = path.split(".")
    setattr(getattr(cfg, section), field, value)
  return cfg


def cli_flags(cache_dir: str, **overrides) -> list[str]:
  values = {**TINY, "data.cache_dir": cache_dir, **overrides}
  return [f"--config.{k}={v}" for k, v in values.items()]


def run_cli(module: str, *args: str, devices: int = 1) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=env, timeout=600)


def replace(cfg: Config, section: str, **fields) -> Config:
  return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})
