"""A stop signal (SIGTERM on preemption or requeue) checkpoints at the next step and the next run
resumes there."""

import json
import os
import signal
import subprocess
import sys
import time

from sbitnet.checkpoint import Checkpointer
from tests.train.helpers import cli_flags, run_cli

RARE = 10_000


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r["step"] for r in map(json.loads, f) if "loss" in r]


def test_sigterm_checkpoints_and_the_next_run_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  flags = cli_flags(str(tmp_path / "cache"), **{
      "train.steps": RARE, "train.log_every": 1, "train.checkpoint_every": RARE,
      "train.eval_every": RARE, "train.stats_every": RARE})
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen([sys.executable, "-m", "sbitnet.train", f"--workdir={workdir}", *flags],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  while len(logged_steps(workdir)) < 3:  # a hang ends with the process's own failure or CI's
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert "Stopped by SIGTERM" in out
  saved = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).latest_step()
  assert saved is not None and saved >= 3 and saved == logged_steps(workdir)[-1]

  resumed = run_cli("sbitnet.train", f"--workdir={workdir}", f"--stop_at={saved + 2}", *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Stopped at step {saved + 2} of" in resumed.stdout
  assert logged_steps(workdir)[-2:] == [saved + 1, saved + 2]


def test_a_process_without_the_signal_takes_on_the_one_another_process_got(monkeypatch):
  """Several processes agree to stop when any got a signal; one that got none exits as the one
  that did (SIGTERM, 143), rather than failing to name its signal."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from sbitnet.train import preemption
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda local: np.asarray([local, signal.SIGTERM.value], np.int32))
  stop = preemption.StopRequest()
  assert stop.agreed() and stop.name == "SIGTERM"
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda local: np.asarray([local, 0], np.int32))
  assert not preemption.StopRequest().agreed()
