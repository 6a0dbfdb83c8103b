"""The host training loop: set-up with every check before any work, then train, evaluate,
log, checkpoint and resume."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from sbitnet import data as data_lib
from sbitnet.checkpoint import Checkpointer, checkpoint_dir, model_meta
from sbitnet.config import (Config, ConfigError, ModelConfig, resolved_model, result_changes,
                            to_json, validate, with_absolute_paths)
from sbitnet.metrics import MetricsWriter, peak_flops
from sbitnet.models import DecoderLM, parameter_counts, train_flops_per_token
from sbitnet.restore import read_config
from sbitnet.sharding import batch_sharding, check_nm_shards, make_mesh, with_mesh
from sbitnet.train import schedules
from sbitnet.train.optimizer import make_optimizer
from sbitnet.train.preemption import StopRequest
from sbitnet.train.progress import Progress
from sbitnet.train.state import create_train_state
from sbitnet.train.step import (evaluate, flip_rate, make_eval_step, make_stats_step,
                                make_train_step)


class NonFiniteLoss(RuntimeError):
  """Training produced a NaN/inf loss; the last good checkpoint was left untouched."""


@dataclasses.dataclass
class Run:
  """Everything `prepare` checked and built; `train_run` consumes it."""
  cfg: Config
  model_cfg: ModelConfig
  workdir: str
  splits: Any
  mesh: Any


def prepare(cfg: Config, workdir: str, force_resume: bool = False) -> Run:
  """Validates the config, data, mesh and workdir (nothing is written, nothing trained).

  Resuming a run whose `config.json` differs from `cfg` in a result-affecting field (other than
  `config.RESUMABLE_CHANGES`) is refused unless `force_resume`, which logs the differences.

  Raises ConfigError / ValueError / FileNotFoundError / CheckpointMismatch with one-paragraph
  messages naming the bad value.
  """
  cfg = with_absolute_paths(cfg)
  validate(cfg, resolved_model(cfg.model, 0))
  if cfg.train.warmup_steps >= cfg.train.steps:
    logging.warning("train.warmup_steps=%d >= train.steps=%d: the learning rate never reaches "
                    "its peak (set --config.train.warmup_steps lower for a short run).",
                    cfg.train.warmup_steps, cfg.train.steps)
  data_lib.validate(cfg.data)
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (cfg.train.batch_size // cfg.train.grad_accum) % batch_shards:
    raise ConfigError(f"train.batch_size={cfg.train.batch_size} / train.grad_accum="
                      f"{cfg.train.grad_accum} must be divisible by the {batch_shards} data x fsdp "
                      f"shards of the mesh {dict(mesh.shape)}.")
  if cfg.train.batch_size % jax.process_count():
    raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be divisible by the "
                      f"{jax.process_count()} processes.")
  shapes = resolved_model(cfg.model, 1)  # the vocabulary is no N:M layer's contraction axis
  check_nm_shards(nnx.eval_shape(
      lambda: DecoderLM(cfg, shapes, rngs=nnx.Rngs(0))).sparse_layers(), mesh)
  splits = data_lib.load_splits(cfg.data)
  data_lib.validation_batch_count(splits, seq_len=cfg.data.seq_len,
                                  batch_size=cfg.train.batch_size)
  model_cfg = resolved_model(cfg.model, splits.vocab_size)
  validate(cfg, model_cfg)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt_dir):
    existing = Checkpointer(ckpt_dir, read_only=True)
    if existing.latest_step() is not None:
      existing.check_compatible(model_meta(model_cfg))
      check_resume(cfg, workdir, force_resume)
  if cfg.train.init_from:
    source = Checkpointer(checkpoint_dir(cfg.train.init_from), read_only=True)
    if source.latest_step() is None:
      raise ConfigError(f"train.init_from={cfg.train.init_from!r} holds no checkpoint.")
    source.check_compatible(model_meta(model_cfg), fix=(
        "train.init_from needs a run of the same model shapes: set the model fields (preset, "
        "d_model, ...) to the source run's, or start from another run."))
  return Run(cfg, model_cfg, workdir, splits, mesh)


# Multi-process runs check for a stop signal at least this often (steps): between two checks
# SLURM's grace time must cover the steps, the checkpoint and the exit.
STOP_CHECK_EVERY = 10


def check_resume(cfg: Config, workdir: str, force: bool) -> None:
  """Raises ConfigError when `cfg` changes a result-affecting field of the run in `workdir` (its
  `config.json`), naming each; with `force` only logs them. A run without a readable
  `config.json` (older schema) is not checked."""
  try:
    saved, _ = read_config(workdir)
  except (FileNotFoundError, TypeError, KeyError, ValueError):
    return
  changes = result_changes(saved, cfg)
  if not changes:
    return
  listing = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changes.items()))
  if force:
    logging.warning("Resuming %s with changed fields (--force_resume): %s.", workdir, listing)
    return
  raise ConfigError(
      f"{workdir} holds a run with another config; resuming it would train a different "
      f"experiment on its checkpoint. Changed: {listing}. Use a fresh --workdir, start from its "
      f"weights with --config.train.init_from={workdir}, or pass --force_resume to resume anyway.")


def global_batch(tree: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in tree.items()}


def train_run(run: Run, stop_at: int | None = None) -> dict[str, Any]:
  """Trains to `cfg.train.steps` (or stops early after step `stop_at`, checkpointing there, as
  a preempted job would), resuming from the workdir; returns a summary dict."""
  cfg, model_cfg, tr = run.cfg, run.model_cfg, run.cfg.train
  optimizer = make_optimizer(tr)
  make_model = lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(tr.seed))
  graphdef, state, shardings = create_train_state(make_model, optimizer, run.mesh)
  switch_step = round(cfg.sparsity.start_fraction * tr.steps) if cfg.sparsity.m else 0
  dense_graphdef = nnx.split(nnx.eval_shape(
      lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(tr.seed), sparse=False)),
      nnx.Param)[0] if switch_step else None

  os.makedirs(run.workdir, exist_ok=True)
  checkpointer = Checkpointer(os.path.join(run.workdir, "checkpoints"), keep=tr.keep_checkpoints)
  meta = model_meta(model_cfg)
  data_state = None
  if checkpointer.latest_step() is not None:
    state, data_state = checkpointer.restore(state, shardings)
    logging.info("Resumed from %s at step %d.", checkpointer.manager.directory, int(state.step))
  elif tr.init_from:
    source = Checkpointer(checkpoint_dir(tr.init_from), read_only=True)
    state = state.replace(params=source.restore_params(state.params, shardings.params))
    logging.info("Initialised parameters from %s (step %d).", tr.init_from, source.latest_step())
  if jax.process_index() == 0:  # only once the restore worked, so a failed one rewrites nothing
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
      f.write(to_json(cfg, model_cfg))

  counts = parameter_counts(model_cfg)
  flops_per_token = train_flops_per_token(model_cfg, cfg.data.seq_len)
  logging.info("Model %s: %s parameters (%s in SparseBitLinear layers), %.3g training FLOPs/token; "
               "arm quant=%s sparsity=%s; data %s.", model_cfg.preset, f"{counts['total']:,}",
               f"{counts['linear']:,}", flops_per_token, cfg.quant.weights,
               f"{cfg.sparsity.n}:{cfg.sparsity.m}" if cfg.sparsity.m else "dense",
               run.splits.describe())

  batch_shard = batch_sharding(run.mesh)
  lr_schedule = schedules.learning_rate(tr)

  def jit_step(gd):
    step = make_train_step(gd, optimizer, lr_schedule, tr.grad_accum, tr.loss_chunk)
    return with_mesh(jax.jit(step, in_shardings=(shardings, batch_shard),
                             out_shardings=(shardings, None), donate_argnums=0), run.mesh)

  sparse_step, dense_step = jit_step(graphdef), (jit_step(dense_graphdef) if switch_step else None)
  eval_step = with_mesh(jax.jit(make_eval_step(graphdef, tr.loss_chunk, tr.grad_accum)), run.mesh)
  stats_step = jax.jit(make_stats_step(graphdef))
  dense_stats_step = jax.jit(make_stats_step(dense_graphdef)) if switch_step else None
  mask_sizes = {name: layer.kernel.size for name, layer in
                nnx.merge(graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                 state.params)).sparse_layers().items()}

  dataset = data_lib.train_dataset(run.splits, seq_len=cfg.data.seq_len,
                                   global_batch_size=tr.batch_size, seed=tr.seed,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  iterator = iter(dataset.to_iter_dataset(data_lib.READ_OPTIONS))
  if data_state is not None:
    iterator.set_state(data_state)
  val_batches = [global_batch(b, batch_shard) for b in data_lib.eval_batches(
      run.splits, seq_len=cfg.data.seq_len, batch_size=tr.batch_size, max_batches=tr.eval_batches,
      process_index=jax.process_index(), process_count=jax.process_count())]

  start = int(state.step)
  writer = MetricsWriter(run.workdir, tensorboard=tr.tensorboard, start_step=start)
  peak = peak_flops(jax.devices()[0])
  tokens_per_step = tr.batch_size * cfg.data.seq_len
  pending_losses: list[jax.Array] = []
  prev_masks = None
  last_eval: dict[str, float] = {}
  progress = Progress(tr.steps, start)
  timer_step, timer = start, time.perf_counter()

  def check_finite(step: int) -> None:
    losses = np.asarray(jnp.stack(pending_losses)) if pending_losses else np.zeros(0)
    pending_losses.clear()
    if not np.isfinite(losses).all():
      latest = checkpointer.latest_step()
      checkpointer.wait()
      raise NonFiniteLoss(
          f"The training loss became non-finite ({losses[~np.isfinite(losses)][0]}) at or before "
          f"step {step}. Stopped without saving; the last good checkpoint "
          f"({'step %d' % latest if latest is not None else 'none'}) in {run.workdir} is intact. "
          "Try a lower train.lr, a longer warm-up, or train.grad_clip.")

  stopped_by = None
  with StopRequest() as stop:
    try:
      last = tr.steps if stop_at is None else min(stop_at, tr.steps)
      for step in range(start, last):
        dense_phase = step < switch_step
        batch = global_batch(next(iterator), batch_shard)
        state, metrics = (dense_step if dense_phase else sparse_step)(state, batch)
        pending_losses.append(metrics["loss"])
        done = step + 1
        if done % tr.log_every == 0 or done == last:
          check_finite(done)
          metrics = jax.device_get(metrics)
          elapsed = time.perf_counter() - timer
          tokens_per_s = (done - timer_step) * tokens_per_step / elapsed
          timer_step, timer = done, time.perf_counter()
          record = {**metrics, "tokens_per_s": tokens_per_s, "sparse": not dense_phase}
          if peak:
            record["mfu"] = tokens_per_s * flops_per_token / (peak * jax.device_count())
          writer.write(done, record)
          progress.update(done, metrics["loss"], last_eval.get("val_ppl"))
        else:
          progress.update(done)
        if done % tr.stats_every == 0 or done == tr.steps:
          masks, stats = (dense_stats_step if dense_phase else stats_step)(state.params)
          if masks and prev_masks is not None and masks.keys() == prev_masks.keys():
            stats["flip_rate"] = flip_rate(prev_masks, masks, mask_sizes)
          prev_masks = masks or None
          writer.write(done, stats)
        if done % tr.eval_every == 0 or done == tr.steps:
          last_eval = evaluate(eval_step, state.params, val_batches)
          writer.write(done, last_eval)
          logging.info("step %d: val_loss %.4f val_ppl %.3f", done, last_eval["val_loss"],
                       last_eval["val_ppl"])
        # Several processes agree on stopping (a collective) at most every STOP_CHECK_EVERY
        # steps and at the steps they log; one process at any step.
        stopping = ((jax.process_count() == 1 or done % min(tr.log_every, STOP_CHECK_EVERY) == 0)
                    and done < last and stop.agreed())
        if done % tr.checkpoint_every == 0 or done == last or stopping:
          check_finite(done)
          checkpointer.save(state, iterator.get_state(), meta)
        if stopping:
          stopped_by = stop.name
          logging.warning("Got %s: checkpointed at step %d in %s and stopping; the next run "
                          "resumes there.", stopped_by, done, checkpointer.manager.directory)
          break
    finally:
      progress.close()
      checkpointer.wait()
      writer.close()

  if not last_eval and stopped_by is None and int(state.step) >= tr.steps:
    last_eval = evaluate(eval_step, state.params, val_batches)
  return {"step": int(state.step), **last_eval, "stopped_by": stopped_by,
          "unigram_ppl": run.splits.unigram_ppl_val,
          "workdir": run.workdir, "metrics": writer.path,
          "checkpoints": str(checkpointer.manager.directory)}
