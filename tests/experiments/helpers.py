"""Shared pieces of the sweep and analysis tests: the repo root, a CPU environment for
subprocesses, tiny `--set` overrides, and run workdirs written without training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sbitnet.config import Config, to_json
from tests.train.helpers import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO_RUNS = os.path.join(ROOT, "tests", "experiments", "two_runs.py")


def tiny_sets(cache_dir: str) -> list[str]:
  return [f"--set={k}={v}" for k, v in {**TINY, "data.cache_dir": cache_dir}.items()]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m module args` from the repo root, on one CPU device."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=600)


def write_run(workdir: str, cfg: Config, records: list[dict]) -> None:
  """A workdir as training leaves it: config.json and metrics.jsonl."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(to_json(cfg, cfg.model))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
