"""Expands an experiment file's `sweep(scale)` into training runs and runs them, locally or as a
SLURM array job. Every run trains in `ROOT/<config name>-<hash of its config>` (see
experiments/runs.py), so the same command run again skips finished runs and resumes the others.

  python -m launch.sweep --experiment=experiments/nm_sweep.py --scale=small --root=runs/nm --dry-run
  python -m launch.sweep --experiment=experiments/nm_sweep.py --scale=small --root=runs/nm \\
      --backend=local [--gpus=4] [--set=train.steps=2000 --set=data.path=DIR]
  python -m launch.sweep --experiment=experiments/four_arms.py --scale=paper \\
      --root=/scratch/4arms --backend=slurm --nodes=4 --gpus_per_run=8 \\
      --sbatch=--partition=gpu --sbatch=--time=24:00:00 --set=data.path=/data/refinedweb
  python -m experiments.analyze --root=runs/nm

--dry-run lists each run (name, status done/partial/new, workdir, the exact command); with
--backend=slurm it prints the sbatch script instead of submitting it. Local: one run per group of
`--gpus_per_run` local GPUs at a time (CUDA_VISIBLE_DEVICES), or one run at a time on the CPU when
there is no GPU; each run's output goes to `WORKDIR/train.log`. SLURM: one array task per unfinished
run, each on `--nodes` nodes with one process per GPU joined through jax.distributed
(sbitnet.distributed); tasks requeue themselves shortly before the time limit and resume from their
checkpoints. Resubmit only after the previous job has ended: two jobs must not train one workdir.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import time
from types import ModuleType

from absl import app, flags

from experiments.runs import STATUSES, run_status, workdir_name
from sbitnet.config import (Config, ConfigError, check_override_paths, field_paths,
                            load_python_file, resolved_model, validate)
from sbitnet.sharding import mesh_shape

POLL_SECONDS = 1.0
REQUEUE_SECONDS = 300  # SIGUSR1 this long before the time limit: checkpoint, then requeue
STOPPED_BY_USR1 = 128 + 10  # sbitnet.train's exit status after a SIGUSR1 stop

_EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment file defining get_config(arg) "
                                  "and sweep(scale), e.g. experiments/nm_sweep.py.", required=True)
_SCALE = flags.DEFINE_string("scale", "small", "Passed to sweep(scale): cpu, small or paper.")
_ROOT = flags.DEFINE_string("root", None, "Directory holding one workdir per run.", required=True)
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "slurm"], "Where the runs train.")
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "List the runs (slurm: print the sbatch script); "
                             "train and submit nothing.")
_SET = flags.DEFINE_multi_string("set", [], "field=value override applied to every run "
                                 "(passed to training as --config.field=value); repeatable.")
_GPUS = flags.DEFINE_integer("gpus", -1, "local: GPUs to use (-1: those in CUDA_VISIBLE_DEVICES, "
                             "else those nvidia-smi lists; 0: run on the CPU, one run at a time).")
_GPUS_PER_RUN = flags.DEFINE_integer("gpus_per_run", 1, "GPUs of one run (slurm: per node).")
_RUNS_PER_GPU = flags.DEFINE_integer("runs_per_gpu", 1, "local: runs sharing each GPU group at "
                                     "once (small models leave a large GPU idle); each gets "
                                     "0.9/k of the GPU memory.")
_NODES = flags.DEFINE_integer("nodes", 1, "slurm: nodes of one run.")
_SBATCH = flags.DEFINE_multi_string("sbatch", [], "slurm: extra sbatch option for the array job, "
                                    "e.g. --sbatch=--partition=gpu; repeatable.")


@dataclasses.dataclass
class SweepRun:
  """One entry of a sweep: its config argument, resolved config, workdir and status."""
  arg: str
  cfg: Config
  workdir: str
  command: list[str]
  status: str
  step: int


def load_experiment(path: str) -> ModuleType:
  """The experiment module at `path`; it must define get_config(arg) and sweep(scale)."""
  if not os.path.isfile(path):
    raise ValueError(f"--experiment={path!r} is not a file; give an experiment file such as "
                     "experiments/nm_sweep.py.")
  module = load_python_file(path)
  missing = [f for f in ("get_config", "sweep") if not callable(getattr(module, f, None))]
  if missing:
    raise ValueError(f"--experiment={path!r} defines no {' and no '.join(missing)}(); an "
                     "experiment file for a sweep needs get_config(arg) and sweep(scale).")
  return module


def parse_overrides(items: list[str]) -> dict[str, str]:
  """['train.steps=100', ...] -> {'train.steps': '100'}; unknown fields are a ConfigError."""
  overrides = {}
  for item in items:
    path, sep, value = item.partition("=")
    if not sep or not path:
      raise ConfigError(f"--set={item!r} is not field=value (e.g. --set=train.steps=1000).")
    overrides[path] = value
  try:
    check_override_paths([f"--config.{path}={value}" for path, value in overrides.items()])
  except ConfigError as e:
    raise ConfigError(str(e).replace("'--config.", "'--set=")) from e
  return overrides


def _typed(path: str, text: str, current: object) -> object:
  """`text` as the type of the field's current value, as --config.<path> would parse it."""
  try:
    if isinstance(current, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return text.lower() in ("true", "1")
    return type(current)(text)
  except ValueError:
    raise ConfigError(f"--set={path}={text!r}: {path} takes type {type(current).__name__} "
                      f"(now {current!r}).") from None


def apply_overrides(cfg: Config, overrides: dict[str, str]) -> Config:
  current = field_paths(cfg)
  for path, text in overrides.items():
    *sections, field = path.split(".")
    obj = cfg
    for section in sections:
      obj = getattr(obj, section)
    setattr(obj, field, _typed(path, text, current[path]))
  return cfg


def expand(experiment: str, scale: str, root: str, overrides: dict[str, str]) -> list[SweepRun]:
  """The runs of `experiment`'s sweep(scale) with `overrides`, each with its workdir and status."""
  module = load_experiment(experiment)
  runs, seen = [], {}
  for arg in module.sweep(scale):
    cfg = apply_overrides(module.get_config(arg), overrides)
    # dtype "auto" would ask JAX for its backend, and so claim a GPU in this launcher process
    model = cfg.model
    if model.dtype == "auto":
      model = dataclasses.replace(model, dtype="float32")
    validate(cfg, resolved_model(model, 0))
    workdir = os.path.join(root, workdir_name(cfg))
    if workdir in seen:
      raise ValueError(f"sweep arguments {seen[workdir]!r} and {arg!r} give the same config "
                       f"({workdir}); every run of a sweep must differ.")
    seen[workdir] = arg
    command = [sys.executable, "-m", "sbitnet.train", f"--config={experiment}:{arg}",
               *(f"--config.{k}={v}" for k, v in overrides.items()), f"--workdir={workdir}"]
    runs.append(SweepRun(arg, cfg, workdir, command, *run_status(workdir, cfg.train.steps)))
  return runs


def listing(runs: list[SweepRun]) -> str:
  lines = []
  for run in runs:
    at = f" at step {run.step}/{run.cfg.train.steps}" if run.status == "partial" else ""
    lines += [f"{run.cfg.name}: {run.status}{at}", f"  workdir: {run.workdir}",
              f"  command: {shlex.join(run.command)}"]
  counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
  lines.append(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
  return "\n".join(lines)


def local_gpus(requested: int) -> list[str]:
  """Device ids for CUDA_VISIBLE_DEVICES: the first `requested` (-1: all) of those visible."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    ids = [i for i in visible.split(",") if i.strip()]
  elif shutil.which("nvidia-smi"):
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    ids = [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
  else:
    ids = []
  if requested > len(ids):
    raise ValueError(f"--gpus={requested} but only {len(ids)} GPUs are visible ({ids}).")
  return ids if requested < 0 else ids[:requested]


# The environment of a run without GPUs: JAX on the CPU even where GPUs are visible.
ON_CPU = {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}


def run_local(runs: list[SweepRun], gpus: list[str], gpus_per_run: int,
              runs_per_gpu: int = 1) -> int:
  """Trains the unfinished runs, `runs_per_gpu` at a time on each group of `gpus_per_run` GPUs
  (or one at a time on the CPU when `gpus` is empty); returns the number of runs that failed."""
  if gpus and len(gpus) < gpus_per_run:
    raise ValueError(f"--gpus_per_run={gpus_per_run} but only {len(gpus)} GPUs are in use.")
  if runs_per_gpu < 1:
    raise ValueError(f"--runs_per_gpu={runs_per_gpu} must be >= 1.")
  groups = [",".join(gpus[i:i + gpus_per_run]) for i in range(0, len(gpus) - gpus_per_run + 1,
                                                              gpus_per_run)]
  slots = [(k, group) for k, group in enumerate(groups * runs_per_gpu)] or [(0, None)]
  shared = {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / runs_per_gpu:.3f}"} if runs_per_gpu > 1 else {}
  for run in runs:
    if run.status == "done":
      print(f"skip {run.cfg.name}: done ({run.workdir})", flush=True)
  pending = [r for r in runs if r.status != "done"]
  active: dict[tuple[int, str | None], tuple[SweepRun, subprocess.Popen]] = {}
  failed = 0
  try:
    while pending or active:
      for slot in [s for s in slots if s not in active][:len(pending)]:
        run = pending.pop(0)
        os.makedirs(run.workdir, exist_ok=True)
        group = slot[1]
        env = ({**os.environ, **ON_CPU} if group is None else
               {**os.environ, **shared, "CUDA_VISIBLE_DEVICES": group})
        with open(os.path.join(run.workdir, "train.log"), "a") as log:
          active[slot] = run, subprocess.Popen(run.command, env=env, stdout=log,
                                               stderr=subprocess.STDOUT)
        where = "the CPU" if group is None else f"GPU {group}"
        how = f"resume from step {run.step}" if run.status == "partial" else "start"
        print(f"{how} {run.cfg.name} on {where} ({run.workdir})", flush=True)
      time.sleep(POLL_SECONDS)
      for slot, (run, proc) in list(active.items()):
        if proc.poll() is None:
          continue
        del active[slot]
        status, step = run_status(run.workdir, run.cfg.train.steps)
        if proc.returncode == 0 and status == "done":
          print(f"done {run.cfg.name} ({run.workdir})", flush=True)
        else:
          failed += 1
          print(f"FAILED {run.cfg.name} (exit {proc.returncode}, step {step}); see "
                f"{os.path.join(run.workdir, 'train.log')}", flush=True)
  finally:
    for _, proc in active.values():
      proc.terminate()
      proc.wait()
  return failed


def check_slurm_layout(run: SweepRun, nodes: int, gpus_per_node: int) -> None:
  """Raises ConfigError where a run cannot start as the array script runs it (one process per
  GPU): its mesh must cover the run's GPUs, with no tensor axis (a tensor-parallel group stays
  inside one process), and its batch must split over the data x fsdp shards."""
  mesh, train = run.cfg.mesh, run.cfg.train
  try:
    data, fsdp, tensor = mesh_shape(mesh.data, mesh.fsdp, mesh.tensor, nodes * gpus_per_node)
  except ValueError as e:
    raise ConfigError(f"{run.cfg.name}: {e}") from None
  if tensor > 1:
    raise ConfigError(f"{run.cfg.name}: mesh.tensor={tensor}, but the array script runs one "
                      "process per GPU and a tensor-parallel group must stay inside one process; "
                      "use mesh.tensor=1 here (or launch/slurm/multi_node.sbatch with "
                      "--ntasks-per-node=1).")
  if (train.batch_size // train.grad_accum) % (data * fsdp):
    raise ConfigError(f"{run.cfg.name}: train.batch_size={train.batch_size} / train.grad_accum="
                      f"{train.grad_accum} does not split over the {data * fsdp} data x fsdp "
                      f"shards of {nodes} x {gpus_per_node} GPUs.")


def sbatch_script(runs: list[SweepRun], name: str, root: str, nodes: int, gpus_per_node: int,
                  options: list[str]) -> str:
  """An sbatch array job, task i training runs[i] on `nodes` x `gpus_per_node` GPUs (one process
  per GPU: sbitnet.distributed reads SLURM's variables). Requeue-friendly: SLURM sends the batch
  shell SIGUSR1 REQUEUE_SECONDS before the time limit; it forwards the signal to the training
  processes (srun relays it), which checkpoint at the next step they agree on and exit with
  128 + SIGUSR1; the shell then requeues the task, which resumes from its workdir."""
  logs = os.path.abspath(os.path.join(root, "slurm"))
  head = [f'--job-name="sbitnet-{name}"', f"--array=0-{len(runs) - 1}", f"--nodes={nodes}",
          f"--ntasks-per-node={gpus_per_node}", f"--gpus-per-node={gpus_per_node}",
          f'--output="{logs}/%x-%A_%a.out"', "--open-mode=append", "--requeue",
          f"--signal=B:USR1@{REQUEUE_SECONDS}", *options]
  cases = [f"  {i}) RUN=({shlex.join(run.command)}) ;;" for i, run in enumerate(runs)]
  return "\n".join([
      "#!/bin/bash",
      *(f"#SBATCH {option}" for option in head),
      "",
      f"# Written by `python -m launch.sweep` for {len(runs)} runs; each trains (or resumes) in",
      "# its workdir. One process per GPU, joined through jax.distributed (sbitnet.distributed).",
      f"cd {shlex.quote(os.getcwd())}",
      "export PYTHONUNBUFFERED=1",
      'case "$SLURM_ARRAY_TASK_ID" in',
      *cases,
      '  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
      "esac",
      'stop() { echo "time limit near: asking the tasks to checkpoint and stop"; '
      'kill -USR1 "$pid"; }',
      "trap stop USR1",
      'srun --kill-on-bad-exit=1 "${RUN[@]}" &',
      "pid=$!",
      "code=0",
      'wait "$pid" || code=$?',
      "# the trap ends a wait early; srun runs on until the tasks have checkpointed",
      'while kill -0 "$pid" 2>/dev/null; do code=0; wait "$pid" || code=$?; done',
      f"if [ \"$code\" -eq {STOPPED_BY_USR1} ]; then",
      '  echo "stopped for the time limit: requeueing"',
      '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
      "fi",
      'exit "$code"',
      ""])


def submit(script: str, path: str) -> str:
  """Writes the script to `path` and submits it; returns the job id."""
  if not shutil.which("sbatch"):
    raise FileNotFoundError("sbatch is not on PATH: run --backend=slurm on a SLURM login node "
                            "(or add --dry-run to see the script).")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(script)
  out = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"sbatch {path} failed: {out.stderr.strip()}")
  return out.stdout.strip()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value.")
  root, experiment = _ROOT.value, _EXPERIMENT.value
  try:
    runs = expand(experiment, _SCALE.value, root, parse_overrides(_SET.value))
    if _BACKEND.value == "local":
      if _DRY_RUN.value:
        print(listing(runs))
        return
      failed = run_local(runs, local_gpus(_GPUS.value), _GPUS_PER_RUN.value, _RUNS_PER_GPU.value)
      sys.exit(f"{failed} of {len(runs)} runs failed." if failed else 0)
    todo = [r for r in runs if r.status != "done"]
    print(listing(runs), file=sys.stderr if _DRY_RUN.value else sys.stdout)
    if not todo:
      print("Every run is done; nothing to submit.")
      return
    for run in todo:
      check_slurm_layout(run, _NODES.value, _GPUS_PER_RUN.value)
    name = os.path.splitext(os.path.basename(experiment))[0]
    script = sbatch_script(todo, name, root, _NODES.value, _GPUS_PER_RUN.value, _SBATCH.value)
    if _DRY_RUN.value:
      print(script)
      return
    job = submit(script, os.path.join(root, "slurm", f"{name}.sbatch"))
  except (ValueError, FileNotFoundError, RuntimeError) as e:  # ConfigError is a ValueError
    sys.exit(f"error: {e}")
  print(f"Submitted array job {job}: {len(todo)} runs; logs in {os.path.join(root, 'slurm')}.")


if __name__ == "__main__":
  app.run(main)
