"""Chunked cross-entropy: logits are formed a chunk of tokens at a time (and again in the backward
pass), so `[batch, seq, vocab]` float32 logits never exist at once."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sbitnet.sharding import BATCH_AXES, constrain


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                          chunk: int) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy and token count.

  hidden `[B, T, d]` (compute dtype), head `[d, V]` (float32 master), targets int32 `[B, T]`
  (negative = ignored); `chunk`: tokens per chunk on each device. Per chunk (`span` positions of
  every row): `logits = h @ head.astype(h.dtype)` in float32,
  `loss = logsumexp(logits) - logits[target]`. Returns float32 scalars `(sum, count)`.

  Gradients: `d_hidden` in hidden's dtype, `d_head` float32. Under a mesh (`jax.set_mesh`) whose
  batch axes split `B` into S shards, the rows are grouped `[S, B/S]` so every chunk stays on its
  own device: the head is cast and gathered once per call, each device sums its head gradient
  over the chunks in float32, and the S partial sums are reduced once after the loop.
  """
  b, length = hidden.shape[:2]
  shards = _batch_shards(b)
  span = max(1, min(chunk * shards // b, length))
  pad = -length % span

  def split(x: jax.Array, fill) -> jax.Array:  # [B, T, ...] -> [chunks, S, B/S, span, ...]
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
    x = x.reshape(shards, b // shards, -1, span, *x.shape[2:])
    return constrain(jnp.moveaxis(x, 2, 0), (None, "batch") + (None,) * (x.ndim - 2))

  total = _chunked_loss(split(hidden, 0), split(targets, -1), head)
  return total, jnp.sum(targets >= 0).astype(jnp.float32)


def _batch_shards(batch: int) -> int:
  """How many shards the mesh's batch axes cut a batch of `batch` rows into (1 without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  shards = math.prod(mesh.shape[axis] for axis in BATCH_AXES if axis in mesh.shape)
  return shards if batch % shards == 0 else 1


def _head_in(head: jax.Array, dtype) -> jax.Array:
  """The head in the compute dtype, whole on every batch shard (vocab may stay split)."""
  return constrain(head.astype(dtype), (None, "vocab"))


def _chunk_logits(h: jax.Array, head: jax.Array) -> jax.Array:
  """h `[S, R, span, d]`, head `[d, V]` -> float32 logits `[S, R, span, V]`."""
  return jnp.einsum("srtd,dv->srtv", h, head, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _chunked_loss(h: jax.Array, t: jax.Array, head: jax.Array) -> jax.Array:
  """h `[C, S, R, span, d]`, t int32 `[C, S, R, span]`, head `[d, V]` float32 -> summed loss."""
  return _loss_fwd(h, t, head)[0]


def _loss_fwd(h, t, head):
  head_in = _head_in(head, h.dtype)

  def body(partial, xs):
    h_c, t_c = xs
    logits = _chunk_logits(h_c, head_in)
    target_logit = jnp.take_along_axis(logits, jnp.maximum(t_c, 0)[..., None], axis=-1)[..., 0]
    losses = jnp.where(t_c >= 0, jax.nn.logsumexp(logits, axis=-1) - target_logit, 0.0)
    return partial + jnp.sum(losses, axis=(1, 2)), None

  partial, _ = jax.lax.scan(body, jnp.zeros(h.shape[1], jnp.float32), (h, t))
  return jnp.sum(partial), (h, t, head_in)


def _loss_bwd(residuals, cotangent):
  """`d logits = (softmax(logits) - onehot(target)) * cotangent` per chunk, rounded to the compute
  dtype so both matmuls run in it; the head gradient accumulates per batch shard in float32."""
  h, t, head_in = residuals

  def body(d_head, xs):
    h_c, t_c = xs
    logits = _chunk_logits(h_c, head_in)
    onehot = jnp.arange(logits.shape[-1]) == t_c[..., None]
    scale = jnp.where(t_c >= 0, cotangent, 0.0)[..., None]
    g = ((jax.nn.softmax(logits, axis=-1) - onehot) * scale).astype(h.dtype)
    d_h = jnp.einsum("srtv,dv->srtd", g, head_in, preferred_element_type=jnp.float32)
    d_head = d_head + jnp.einsum("srtd,srtv->sdv", h_c, g, preferred_element_type=jnp.float32)
    return constrain(d_head, ("batch", None, "vocab")), d_h.astype(h.dtype)

  d_head = jnp.zeros((h.shape[1],) + head_in.shape, jnp.float32)
  d_head, d_h = jax.lax.scan(body, constrain(d_head, ("batch", None, "vocab")), (h, t))
  return d_h, np.zeros(t.shape, jax.dtypes.float0), jnp.sum(d_head, axis=0)


_chunked_loss.defvjp(_loss_fwd, _loss_bwd)
