"""python -m sbitnet.train [--config=experiments/<name>.py[:arg]] [--config.<field>=...] [--workdir=DIR]

Trains (or resumes) one run. With no flags: the embedded tiny 6:8 Sparse BitNet on the Python
standard library's source code, in `runs/<config name>`.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags, logging

from sbitnet.checkpoint import CheckpointUnreadable
from sbitnet.cli import USER_ERRORS, define_config_flag, fail, quiet_library_logs
from sbitnet.plot import plot_run

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory (default: runs/<config name>).")
_STOP_AT = flags.DEFINE_integer("stop_at", None, "Checkpoint and exit after this step (to fit a "
                                "job's time slice); the next run resumes.")
_FORCE_RESUME = flags.DEFINE_bool("force_resume", False, "Resume the workdir's run even where this "
                                  "config changes a result-affecting field of its config.json "
                                  "(the changes are logged).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; use --flag=value.")
  quiet_library_logs()
  from sbitnet import distributed
  from sbitnet.config import run_name
  from sbitnet.train.run import prepare, train_run  # after flag parsing: imports JAX
  try:
    host = distributed.initialize().process_id  # before any other JAX work
  except USER_ERRORS as e:
    fail(str(e))
  logging.set_verbosity(logging.INFO if host == 0 else logging.WARNING)
  cfg = _CONFIG.value
  name = run_name(cfg)
  workdir = _WORKDIR.value or os.path.join("runs", name)
  print(f"sbitnet: run {name!r} in {os.path.abspath(workdir)}", flush=True)
  try:
    run = prepare(cfg, workdir, _FORCE_RESUME.value)
  except USER_ERRORS as e:
    fail(str(e))
  try:
    summary = train_run(run, _STOP_AT.value)
  except CheckpointUnreadable as e:  # found while restoring, before any training step
    fail(str(e))
  if summary["stopped_by"]:  # exit as if killed by the signal; the next run resumes
    print(f"Stopped by {summary['stopped_by']} at step {summary['step']}; checkpoint in "
          f"{summary['checkpoints']}.", flush=True)
    sys.exit(128 + signal.Signals[summary["stopped_by"]].value)
  if host:  # metrics, plots and the summary belong to host 0
    return
  png = plot_run(workdir)
  steps = cfg.train.steps
  if summary["step"] < steps:  # --stop_at: a time slice, not the end of the run
    print(f"\nStopped at step {summary['step']} of {steps} (--stop_at); checkpoint in "
          f"{summary['checkpoints']}. Run the same command again to continue.", flush=True)
    return
  if summary["step"] > steps:
    print(f"\nThe run in {workdir} was already at step {summary['step']}, past "
          f"train.steps={steps}: nothing was trained.", flush=True)
  print(f"\nDone at step {summary['step']}: validation PPL {summary['val_ppl']:.3f} "
        f"(unigram baseline {summary['unigram_ppl']:.2f}).\n"
        f"  metrics:     {os.path.abspath(summary['metrics'])}\n"
        f"  plots:       {os.path.abspath(png)}\n"
        f"  checkpoints: {summary['checkpoints']}\n"
        f"  evaluate:    python -m sbitnet.eval --workdir={workdir}\n"
        f"  sample:      python -m sbitnet.sample --workdir={workdir} --prompt='def '", flush=True)


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
