"""Checkpoints through one orbax CheckpointManager: async save, keep-last-N, resume, params-only init.

Items per step: `params` and `opt_state` (sharded arrays), `loop` (JSON: the step and the grain
iterator state) and `meta` (JSON: the resolved model shapes, checked on every restore).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from sbitnet.train.state import TrainState


class CheckpointMismatch(ValueError):
  """A checkpoint written for a different model than the one being restored into."""


class CheckpointUnreadable(ValueError):
  """A checkpoint whose files are missing, truncated or corrupted."""


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def checkpoint_dir(path: str) -> str:
  """A run's workdir or its checkpoints folder -> the checkpoints folder."""
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


class Checkpointer:
  """`Checkpointer(workdir)`: saves under `workdir/checkpoints/<step>/`."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    # "read_only" opens an existing directory without creating or pruning anything (orbax's own
    # read_only mode logs warnings on every open).
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                           create=not read_only,
                                           enable_async_checkpointing=async_save and not read_only)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                         item_names=("params", "opt_state", "loop", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, data_state: dict, meta: dict) -> None:
    step = int(state.step)
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        loop=ocp.args.JsonSave({"step": step, "data_iterator": data_state}),
        meta=ocp.args.JsonSave(meta)))

  def save_params(self, step: int, params: Any, meta: dict) -> None:
    """Parameters alone, for a model made outside training (`python -m sbitnet.convert`): read by
    `restore_params` (evaluation, `train.init_from`), not by `restore` (no optimizer state)."""
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        loop=ocp.args.JsonSave({"step": step, "data_iterator": None}),
        meta=ocp.args.JsonSave(meta)))

  def read_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self._restore(step, meta=ocp.args.JsonRestore())["meta"]

  def check_compatible(self, meta: dict, step: int | None = None,
                       fix: str = "Use a matching config, or a fresh --workdir.") -> None:
    """Raises CheckpointMismatch naming the differing model fields, then `fix`."""
    saved = self.read_meta(step).get("model", {})
    wanted = meta["model"]
    diffs = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if diffs:
      listing = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
      raise CheckpointMismatch(
          f"The checkpoint in {self.manager.directory} was written by a different model "
          f"({listing}). {fix}")

  def restore(self, state: TrainState, shardings: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict]:
    """Restores the full state onto `shardings` (any mesh) and the data iterator state."""
    step = self.latest_step() if step is None else step
    out = self._restore(
        step,
        params=ocp.args.StandardRestore(_abstract(state.params, shardings.params)),
        opt_state=ocp.args.StandardRestore(_abstract(state.opt_state, shardings.opt_state)),
        loop=ocp.args.JsonRestore())
    step = jax.device_put(jnp.asarray(out["loop"]["step"], jnp.int32), shardings.step)
    return TrainState(step, out["params"], out["opt_state"]), out["loop"]["data_iterator"]

  def restore_params(self, params: Any, shardings: Any, step: int | None = None) -> Any:
    """Parameters only (dense-to-sparse continuation, evaluation, export)."""
    step = self.latest_step() if step is None else step
    out = self._restore(step, params=ocp.args.StandardRestore(_abstract(params, shardings)))
    return out["params"]

  def _restore(self, step: int, **items: ocp.args.CheckpointArgs) -> Any:
    """`manager.restore` of `items`, with any read failure reported as CheckpointUnreadable."""
    _drop_late_read_callbacks()
    steps = sorted(self.manager.all_steps())
    if step not in steps:
      raise ValueError(f"No checkpoint at step {step} in {self.manager.directory}; it holds "
                       f"steps {steps or 'none'}.")
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files
      first_line = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
      folder = os.path.join(str(self.manager.directory), str(step))
      self.close()  # stop orbax's background threads, which otherwise fail noisily at exit
      raise CheckpointUnreadable(
          f"The checkpoint at step {step} in {self.manager.directory} could not be read "
          f"({type(e).__name__}: {first_line}). It is incomplete or corrupted. Move {folder} "
          "aside to fall back to the previous checkpoint, or use a fresh --workdir.") from e

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


class _UnretrievedReadErrors(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" records whose exception was raised in
  orbax or tensorstore code: the other failed reads of a restore that already failed."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is None or not str(record.msg).startswith("Task exception was never retrieved"):
      return True
    files = [frame.filename for frame in traceback.extract_tb(error.__traceback__)]
    return not any("orbax" in f or "tensorstore" in f for f in files)


def _drop_late_read_callbacks() -> None:
  """When one read of a restore fails, orbax closes its event loop while tensorstore still
  completes the other reads; each completion then raises `RuntimeError('Event loop is closed')` in
  a callback thread, which Python prints as an unraisable-exception traceback around our one-line
  error, and other failed reads are logged by asyncio as exceptions never retrieved. Installs
  (once) an unraisable hook that drops exactly the former and an `asyncio` log filter that drops
  exactly the latter (`_UnretrievedReadErrors`); everything else still gets through."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_callbacks", False):
    return
  logging.getLogger("asyncio").addFilter(_UnretrievedReadErrors())

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def model_meta(model_cfg) -> dict:
  """What a checkpoint must agree on to be restored: the resolved model shapes."""
  fields = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size",
            "tie_embeddings", "qkv_bias")
  return {"model": {k: getattr(model_cfg, k) for k in fields}}
