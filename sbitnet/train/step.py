"""Pure, jittable train/eval/statistics steps over a TrainState."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sbitnet.ops import absmean_scale, ternary_histogram
from sbitnet.train.loss import chunked_cross_entropy
from sbitnet.train.state import TrainState

Batch = dict[str, jax.Array]   # {"inputs": int32 [B, T], "targets": int32 [B, T]}


def batch_loss(graphdef: nnx.GraphDef, params, batch: Batch, chunk: int
               ) -> tuple[jax.Array, jax.Array]:
  """(summed cross-entropy, token count) of the model `graphdef ⊕ params` on `batch`."""
  model = nnx.merge(graphdef, params)
  hidden = model.hidden_states(batch["inputs"])
  return chunked_cross_entropy(hidden, model.head_weight(), batch["targets"], chunk)


def micro_batches(batch: Batch, count: int) -> Batch:
  """`[B, ...]` leaves -> `[count, B / count, ...]`: micro-batch i holds rows i, i + count, ...
  (strided, so each device keeps its own rows of a batch-sharded array)."""
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1), batch)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, grad_accum: int, chunk: int
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """`train_step(state, batch) -> (state, metrics)`: mean token loss over `grad_accum`
  micro-batches (strided rows, so each device keeps its own), AdamW update.
  metrics: loss, grad_norm (before clipping), lr (the rate applied at this step)."""

  def mean_loss(params, micro):
    total, count = batch_loss(graphdef, params, micro, chunk)
    return total / count

  def train_step(state: TrainState, batch: Batch):
    micro = micro_batches(batch, grad_accum)

    def accumulate(carry, mb):
      loss, grads = jax.value_and_grad(mean_loss)(state.params, mb)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
    (loss, grads), _ = jax.lax.scan(accumulate, zeros, micro)
    loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr_schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, chunk: int, grad_accum: int = 1) -> Callable:
  """`eval_step(params, batch) -> (summed loss, token count)`, over `grad_accum` micro-batches
  as the train step splits its batch (so evaluation fits where training does)."""

  def eval_step(params, batch: Batch):
    def add(carry, mb):  # params ride in the carry: nnx.merge wants them at the body's trace level
      p, sums = carry
      return (p, jax.tree.map(jnp.add, sums, batch_loss(graphdef, p, mb, chunk))), None

    zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    return jax.lax.scan(add, (params, zeros), micro_batches(batch, grad_accum))[0][1]

  return eval_step


def evaluate(eval_step: Callable, params, batches: list[Batch]) -> dict[str, float]:
  """Token-weighted mean loss over `batches`: {"val_loss", "val_ppl" = exp(val_loss)}."""
  if not batches:
    raise ValueError("evaluate needs at least one validation batch.")
  total = count = 0.0
  for batch in batches:
    s, c = eval_step(params, batch)
    total, count = total + float(s), count + float(c)
  loss = total / count
  return {"val_loss": loss, "val_ppl": math.exp(min(loss, 80.0))}


def make_stats_step(graphdef: nnx.GraphDef) -> Callable:
  """`stats(params) -> (packed masks, metrics)`: per layer the bit-packed N:M masks (for the flip
  rate against the previous snapshot) and gamma per stacked layer and fused projection; overall the
  zero fraction of W_eff and the {-1, 0, +1} histogram of W_eff / gamma."""

  def stats(params):
    model = nnx.merge(graphdef, params)
    masks, metrics, counts, numel = {}, {}, jnp.zeros(3), 0
    for name, layer in model.sparse_layers().items():
      w_eff = layer.effective_weight()
      counts += ternary_histogram(jnp.sign(w_eff)) * w_eff.size
      numel += w_eff.size
      gamma = jax.vmap(lambda w: absmean_scale(w, layer.spec.split))(layer.kernel[...])
      metrics[f"gamma/{name}"] = gamma
      mask = layer.mask()
      if mask is not None:
        masks[name] = jnp.packbits(mask.reshape(-1))
    metrics["ternary_histogram"] = counts / numel
    metrics["zero_fraction"] = metrics["ternary_histogram"][1]
    return masks, metrics

  return stats


def flip_rate(prev_masks: dict, masks: dict, mask_sizes: dict[str, int]) -> jax.Array:
  """Fraction of mask bits changed between two snapshots of bit-packed masks, over all layers."""
  changed = sum(jnp.sum(jax.lax.population_count(jnp.bitwise_xor(prev_masks[k], masks[k])),
                        dtype=jnp.float32) for k in masks)
  return changed / sum(mask_sizes[k] for k in masks)
