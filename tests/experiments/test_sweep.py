"""launch.sweep without training: expansion, workdir hashing, the dry-run listing, errors, the
local scheduler (on stand-in commands) and the SLURM array script."""

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from experiments import nm_sweep
from experiments.runs import config_hash, run_status, workdir_name
from launch import sweep
from sbitnet.config import ConfigError
from tests.experiments.helpers import ROOT, TWO_RUNS, run_module, write_run

NM_SWEEP = os.path.join(ROOT, "experiments", "nm_sweep.py")


def _set(cfg, path, value):
  section, field = path.split(".")
  setattr(getattr(cfg, section), field, value)
  return cfg


def test_expand_nm_sweep(tmp_path):
  runs = sweep.expand(NM_SWEEP, "small", str(tmp_path), {"train.steps": "7"})
  args = list(nm_sweep.sweep("small"))
  assert [r.arg for r in runs] == args and len(args) == 16
  assert len({r.workdir for r in runs}) == 16
  for run in runs:
    assert run.cfg.train.steps == 7 and run.status == "new" and run.step == 0
    assert os.path.dirname(run.workdir) == str(tmp_path)
    assert os.path.basename(run.workdir) == workdir_name(run.cfg)
    assert run.command[1:] == ["-m", "sbitnet.train", f"--config={NM_SWEEP}:{run.arg}",
                               "--config.train.steps=7", f"--workdir={run.workdir}"]
  bitnet_4of8 = next(r for r in runs if r.arg.startswith("precision=bitnet,n=4,m=8"))
  assert bitnet_4of8.cfg.quant.weights == "ternary" and bitnet_4of8.cfg.sparsity.n == 4
  assert os.path.basename(bitnet_4of8.workdir).startswith("nm_sweep-bitnet-4of8-")


def test_workdir_hash_is_stable_and_follows_results():
  base = nm_sweep.get_config("precision=bitnet,n=6,m=8")
  assert config_hash(base) == config_hash(nm_sweep.get_config("precision=bitnet,n=6,m=8"))
  same = {"train.log_every": 1, "train.eval_every": 7, "train.checkpoint_every": 3,
          "data.cache_dir": "/elsewhere", "mesh.fsdp": 4, "model.remat": "full"}
  for path, value in same.items():
    cfg = _set(nm_sweep.get_config("precision=bitnet,n=6,m=8"), path, value)
    assert config_hash(cfg) == config_hash(base), path
  different = {"sparsity.n": 4, "quant.weights": "none", "train.lr": 1e-4, "train.seed": 1,
               "train.steps": 301, "data.path": "other/*.py", "train.eval_batches": 9,
               "model.d_model": 128, "sparsity.start_fraction": 0.5}
  hashes = {config_hash(base)}
  for path, value in different.items():
    hashes.add(config_hash(_set(nm_sweep.get_config("precision=bitnet,n=6,m=8"), path, value)))
  assert len(hashes) == 1 + len(different)
  # the value, not its spelling, decides
  a = sweep.apply_overrides(nm_sweep.get_config(), {"train.lr": "1e-3", "train.tensorboard": "0"})
  b = sweep.apply_overrides(nm_sweep.get_config(), {"train.lr": "0.001"})
  assert a.train.lr == 0.001 and config_hash(a) == config_hash(b)


def test_status_from_metrics(tmp_path):
  cfg = nm_sweep.get_config()
  workdir = str(tmp_path / "run")
  assert run_status(workdir, 4) == ("new", 0)
  write_run(workdir, cfg, [{"step": 2, "loss": 3.0}, {"step": 2, "val_ppl": 9.0}])
  assert run_status(workdir, 4) == ("partial", 2)
  write_run(workdir, cfg, [{"step": 4, "loss": 3.0}, {"step": 4, "val_ppl": 8.0}])
  assert run_status(workdir, 4) == ("done", 4)


def test_dry_run_lists_runs_with_status(tmp_path):
  root = str(tmp_path)
  runs = sweep.expand(TWO_RUNS, "cpu", root, {})
  write_run(runs[0].workdir, runs[0].cfg, [{"step": 300, "val_ppl": 5.0}])
  write_run(runs[1].workdir, runs[1].cfg, [{"step": 100, "loss": 4.0}])
  out = run_module("launch.sweep", f"--experiment={TWO_RUNS}", "--scale=cpu", f"--root={root}",
                   "--dry-run")
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
      "nm_sweep-bf16-0of0: done", f"  workdir: {runs[0].workdir}",
      f"  command: {shlex.join(runs[0].command)}",
      "nm_sweep-bf16-6of8: partial at step 100/300", f"  workdir: {runs[1].workdir}",
      f"  command: {shlex.join(runs[1].command)}",
      "2 runs: 1 done, 1 partial, 0 new"]
  assert sorted(os.listdir(root)) == sorted(os.path.basename(r.workdir) for r in runs)


def test_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="'experiments/nope.py' is not a file"):
    sweep.load_experiment("experiments/nope.py")
  with pytest.raises(ValueError, match="defines no get_config and no sweep"):
    sweep.load_experiment(os.path.join(ROOT, "experiments", "common.py"))
  with pytest.raises(ConfigError, match="Unknown config field 'train.stepz' in '--set=train.stepz=3'"):
    sweep.parse_overrides(["train.stepz=3"])
  with pytest.raises(ConfigError, match="'train.steps' is not field=value"):
    sweep.parse_overrides(["train.steps"])
  with pytest.raises(ConfigError, match="train.steps takes type int"):
    sweep.apply_overrides(nm_sweep.get_config(), {"train.steps": "3.5"})
  with pytest.raises(ConfigError, match="quant.weights='fp4' is not valid"):
    sweep.expand(NM_SWEEP, "cpu", str(tmp_path), {"quant.weights": "fp4"})
  twice = tmp_path / "twice.py"
  twice.write_text("from experiments.nm_sweep import get_config\n"
                   "def sweep(scale):\n  yield 'n=4'\n  yield 'n=4,m=8'\n")
  with pytest.raises(ValueError, match="'n=4' and 'n=4,m=8' give the same config"):
    sweep.expand(str(twice), "cpu", str(tmp_path), {})
  out = run_module("launch.sweep", "--experiment=experiments/nm_sweep.py", f"--root={tmp_path}",
                   "--set=sparsity.k=2", "--dry-run")
  assert out.returncode != 0 and "Unknown config field 'sparsity.k'" in out.stderr


def _stand_in(workdir: str, steps: int, code: int = 0) -> list[str]:
  """A command that 'trains' like sbitnet.train: writes the final evaluation (unless it fails)
  and records the GPUs it was given."""
  script = (f"import json, os, sys; d = {workdir!r}; open(os.path.join(d, 'gpus'), 'w').write("
            "os.environ.get('CUDA_VISIBLE_DEVICES', 'none') or 'none:' + "
            "os.environ.get('JAX_PLATFORMS', '')); "
            f"{code} or open(os.path.join(d, 'metrics.jsonl'), 'a').write(json.dumps("
            f"{{'step': {steps}, 'val_ppl': 3.0}}) + '\\n'); sys.exit({code})")
  return [sys.executable, "-c", script]


def _stand_in_runs(tmp_path, codes):
  cfg = nm_sweep.get_config()
  runs = []
  for i, code in enumerate(codes):
    workdir = str(tmp_path / f"run{i}")
    runs.append(sweep.SweepRun(f"arg{i}", cfg, workdir, _stand_in(workdir, cfg.train.steps, code),
                               "new", 0))
  return runs


def test_local_backend_gives_each_run_its_gpus(tmp_path, capfd):
  runs = _stand_in_runs(tmp_path, [0, 0, 0, 1])
  write_run(runs[0].workdir, runs[0].cfg, [{"step": 300, "val_ppl": 2.0}])
  runs[0].status = "done"
  assert sweep.run_local(runs, ["4", "5", "6", "7"], gpus_per_run=2) == 1
  gpus = [open(os.path.join(r.workdir, "gpus")).read() for r in runs[1:]]
  assert set(gpus) <= {"4,5", "6,7"} and len(gpus) == 3
  assert not os.path.exists(os.path.join(runs[0].workdir, "gpus"))  # finished: skipped
  out = capfd.readouterr().out
  assert f"skip nm_sweep-bitnet-6of8: done ({runs[0].workdir})" in out
  assert "FAILED" in out and f"{runs[3].workdir}/train.log" in out
  assert [run_status(r.workdir, 300)[0] for r in runs] == ["done"] * 3 + ["partial"]


def test_local_backend_shares_a_gpu_between_runs(tmp_path):
  runs = _stand_in_runs(tmp_path, [0, 0, 0])
  assert sweep.run_local(runs, ["2"], gpus_per_run=1, runs_per_gpu=3) == 0
  assert [open(os.path.join(r.workdir, "gpus")).read() for r in runs] == ["2"] * 3
  with pytest.raises(ValueError, match="--runs_per_gpu=0 must be >= 1"):
    sweep.run_local(runs, ["2"], gpus_per_run=1, runs_per_gpu=0)


def test_local_backend_on_cpu_runs_one_at_a_time(tmp_path, monkeypatch):
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  runs = _stand_in_runs(tmp_path, [0, 0])
  assert sweep.run_local(runs, [], gpus_per_run=1) == 0
  assert [open(os.path.join(r.workdir, "gpus")).read() for r in runs] == ["none:cpu"] * 2


def test_local_gpus(monkeypatch):
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
  assert sweep.local_gpus(-1) == ["3", "5"] and sweep.local_gpus(1) == ["3"]
  assert sweep.local_gpus(0) == []
  with pytest.raises(ValueError, match="--gpus=3 but only 2 GPUs are visible"):
    sweep.local_gpus(3)


def test_slurm_dry_run_prints_an_array_script_of_unfinished_runs(tmp_path):
  root = str(tmp_path / "root")
  runs = sweep.expand(TWO_RUNS, "cpu", root, {"train.steps": "5"})
  write_run(runs[0].workdir, runs[0].cfg, [{"step": 5, "val_ppl": 5.0}])
  out = run_module("launch.sweep", f"--experiment={TWO_RUNS}", "--scale=cpu", f"--root={root}",
                   "--backend=slurm", "--nodes=2", "--gpus_per_run=4", "--set=train.steps=5",
                   "--sbatch=--partition=gpu", "--sbatch=--time=2:00:00", "--dry-run")
  assert out.returncode == 0, out.stderr
  script = out.stdout
  assert "nm_sweep-bf16-0of0: done" in out.stderr
  for line in ("#SBATCH --array=0-0", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
               "#SBATCH --gpus-per-node=4", "#SBATCH --requeue", "#SBATCH --open-mode=append",
               "#SBATCH --signal=B:USR1@300", "#SBATCH --partition=gpu", "#SBATCH --time=2:00:00",
               f'#SBATCH --output="{root}/slurm/%x-%A_%a.out"', f"cd {ROOT}"):
    assert line in script.splitlines(), line
  assert runs[0].workdir not in script and not os.path.exists(os.path.join(root, "slurm"))
  assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

  # Task 0 hands srun exactly the unfinished run's command (srun and scontrol stubbed).
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  srun = bin_dir / "srun"
  srun.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/srun_args\n')
  srun.chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "0"}
  done = subprocess.run(["bash"], input=script, text=True, env=env, capture_output=True)
  assert done.returncode == 0, done.stderr
  args = (tmp_path / "srun_args").read_text().splitlines()
  expected = sweep.expand(TWO_RUNS, "cpu", root, {"train.steps": "5"})[1].command
  assert args == ["--kill-on-bad-exit=1", *expected]


@pytest.mark.parametrize("overrides,message", [
    (["--set=mesh.tensor=2"], "mesh.tensor=2, but the array script runs one process per GPU"),
    (["--set=train.batch_size=12"], "does not split over the 8 data x fsdp shards of 2 x 4 GPUs"),
    (["--set=mesh.fsdp=3"], "cannot fill 8 devices"),
])
def test_slurm_refuses_runs_that_could_not_start(overrides, message, tmp_path):
  out = run_module("launch.sweep", f"--experiment={TWO_RUNS}", "--scale=cpu",
                   f"--root={tmp_path / 'root'}", "--backend=slurm", "--nodes=2",
                   "--gpus_per_run=4", "--set=train.steps=5", *overrides, "--dry-run")
  assert out.returncode != 0 and message in out.stderr and "#SBATCH" not in out.stdout


@pytest.mark.parametrize("script", ["sweep", "single_node", "multi_node"])
def test_slurm_time_limit_signal_reaches_training_then_requeues(script, tmp_path):
  """The batch shell (the sweep's array script, or a template in launch/slurm/) forwards SLURM's
  USR1 to the training step (srun), waits for it to checkpoint and exit with 128 + SIGUSR1,
  then requeues the job (srun and scontrol stubbed)."""
  if script == "sweep":
    out = run_module("launch.sweep", f"--experiment={TWO_RUNS}", "--scale=cpu",
                     f"--root={tmp_path / 'root'}", "--backend=slurm", "--set=train.steps=5",
                     "--dry-run")
    assert out.returncode == 0, out.stderr
    text, job = out.stdout, "77_0"
  else:
    text, job = (pathlib.Path(ROOT) / "launch" / "slurm" / f"{script}.sbatch").read_text(), "77"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(
      f"#!{sys.executable}\nimport pathlib, signal, sys, time\n"
      f"signal.signal(signal.SIGUSR1, lambda *_: sys.exit(138))\n"
      f"pathlib.Path({str(tmp_path / 'started')!r}).touch()\ntime.sleep(60)\n")
  (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/scontrol_args\n')
  for stub in ("srun", "scontrol"):
    (bin_dir / stub).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "0",
         "SLURM_ARRAY_JOB_ID": "77", "SLURM_JOB_ID": "77", "SLURM_SUBMIT_DIR": str(tmp_path),
         "SLURM_JOB_NODELIST": "node1"}
  shell = subprocess.Popen(["bash", "-c", text], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  for _ in range(300):
    if (tmp_path / "started").exists():
      break
    time.sleep(0.1)
  shell.send_signal(signal.SIGUSR1)
  stdout, stderr = shell.communicate(timeout=60)
  assert shell.returncode == 138, stderr
  assert "requeueing" in stdout
  assert (tmp_path / "scontrol_args").read_text().split() == ["requeue", job]
