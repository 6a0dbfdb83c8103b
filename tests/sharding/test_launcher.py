"""`python -m launch.local` runs cooperating processes through jax.distributed: a 2-process
training run matches the 1-process run, and one failing process fails the launch."""

import json
import os
import subprocess
import sys

from launch.local import launch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4, "model.n_kv_heads": 2,
        "model.d_ff": 128, "data.seq_len": 32, "data.path": "json/*.py", "train.batch_size": 8,
        "train.steps": 3, "train.log_every": 1, "train.stats_every": 3, "train.eval_every": 1000,
        "train.eval_batches": 2, "train.checkpoint_every": 3, "train.warmup_steps": 1,
        "mesh.fsdp": 2}


def train_command(workdir, cache) -> list[str]:
  flags = [f"--config.{k}={v}" for k, v in {**TINY, "data.cache_dir": cache}.items()]
  return [sys.executable, "-m", "sbitnet.train", *flags, f"--workdir={workdir}"]


def run(args: list[str], devices: int) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def losses(workdir) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_two_processes_match_one(tmp_path):
  cache = str(tmp_path / "cache")
  one = run(train_command(tmp_path / "one", cache), devices=2)
  assert one.returncode == 0, one.stderr[-3000:]
  two = run([sys.executable, "-m", "launch.local", "--num_processes=2", "--devices_per_process=1",
             "--", *train_command(tmp_path / "two", cache)], devices=1)
  assert two.returncode == 0, two.stdout[-3000:]
  assert "[1] sbitnet: run" in two.stdout and "[0] Done at step 3" in two.stdout
  assert "Done at step" not in "".join(l for l in two.stdout.splitlines() if l.startswith("[1]"))
  single, multi = losses(tmp_path / "one"), losses(tmp_path / "two")  # host 0 alone writes
  assert len(single) == len(multi) == 3
  assert max(abs(a - b) for a, b in zip(single, multi)) < 1e-5 * max(single)
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3"]


def test_one_failing_process_fails_the_launch_and_stops_the_rest(capfd):
  script = ("import os, sys, time; rank = os.environ['SBITNET_PROCESS_ID']; print('rank', rank, "
            "os.environ['SBITNET_NUM_PROCESSES'], flush=True); time.sleep(0 if rank == '1' else "
            "120); print('rank', rank, 'finished', flush=True); sys.exit(3)")
  assert launch([sys.executable, "-c", script], num_processes=2) == 3
  out = capfd.readouterr().out
  assert "[0] rank 0 2" in out and "[1] rank 1 2" in out
  assert "[0] rank 0 finished" not in out  # rank 0 was stopped, not waited for


def test_a_stop_signal_to_the_launcher_reaches_every_process():
  """SIGTERM to `launch.local` (a preempted job) is passed to each process, which can then
  checkpoint and exit itself; the launcher exits with their code."""
  import signal
  import time
  script = ("import os, signal, sys, time; rank = os.environ['SBITNET_PROCESS_ID']; "
            "signal.signal(signal.SIGTERM, lambda *_: (print('rank', rank, 'stopping', "
            "flush=True), sys.exit(143))); print('rank', rank, 'ready', flush=True); "
            "time.sleep(120)")
  proc = subprocess.Popen([sys.executable, "-m", "launch.local", "--num_processes=2", "--",
                           sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if sum("ready" in l for l in seen) == 2:
      break
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out = "".join(seen) + proc.communicate(timeout=60)[0]
  assert proc.returncode == 143
  assert "[0] rank 0 stopping" in out and "[1] rank 1 stopping" in out
