"""python -m sbitnet.eval --workdir=DIR [--step=N] [--batches=K]

Prints the validation PPL of a run's latest (or given) checkpoint on its own validation split.
"""

from __future__ import annotations

import jax
from absl import app, flags
from flax import nnx

from sbitnet.cli import USER_ERRORS, fail, quiet_library_logs

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_BATCHES = flags.DEFINE_integer("batches", None, "Validation batches (default: the run's "
                                "train.eval_batches; 0 = the whole split).")


def main(argv: list[str]) -> None:
  del argv
  quiet_library_logs()
  from sbitnet import data as data_lib
  from sbitnet.restore import load_run
  from sbitnet.sharding import batch_sharding, make_mesh
  from sbitnet.train.run import global_batch
  from sbitnet.train.step import evaluate, make_eval_step
  try:
    loaded = load_run(_WORKDIR.value, _STEP.value)
    splits = data_lib.load_splits(loaded.cfg.data)
  except USER_ERRORS as e:
    fail(str(e))
  tr = loaded.cfg.train
  batches = _BATCHES.value if _BATCHES.value is not None else tr.eval_batches
  if batches < 0:
    fail(f"--batches={batches} must be >= 0 (0 = the whole validation split).")
  sharding = batch_sharding(make_mesh())
  val = [global_batch(b, sharding) for b in data_lib.eval_batches(
      splits, seq_len=loaded.cfg.data.seq_len, batch_size=tr.batch_size,
      max_batches=batches or None, process_index=jax.process_index(),
      process_count=jax.process_count())]
  graphdef, params = nnx.split(loaded.model, nnx.Param)
  result = evaluate(jax.jit(make_eval_step(graphdef, tr.loss_chunk, tr.grad_accum)), params, val)
  print(f"step {loaded.step}: val_loss {result['val_loss']:.4f}  val_ppl {result['val_ppl']:.3f}  "
        f"({len(val)} batches x {tr.batch_size} x {loaded.cfg.data.seq_len} tokens; unigram "
        f"baseline {splits.unigram_ppl_val:.2f})")


if __name__ == "__main__":
  app.run(main)
