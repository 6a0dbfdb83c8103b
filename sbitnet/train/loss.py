"""Chunked cross-entropy: logits are formed `chunk` tokens at a time and recomputed in the
backward pass, so `[batch, seq, vocab]` float32 logits never exist at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                          chunk: int) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy and token count.

  hidden `[B, T, d]` (compute dtype), head `[d, V]` (float32 master), targets int32 `[B, T]`
  (negative = ignored). Per chunk of about `chunk` tokens (`chunk // B` positions of every row):
  `logits = h @ head` (`logits_f32`),
  `loss = logsumexp(logits) - logits[target]`. Returns float32 scalars `(sum, count)`.
  """
  b, length, d = hidden.shape
  # Chunks run along the sequence and span every row, so a batch sharded over devices stays
  # sharded: each device forms the logits of its own rows only.
  span = max(1, min(chunk // b, length))
  pad = -length % span
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, span, d).swapaxes(0, 1)
  t = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=-1).reshape(b, -1, span).swapaxes(0, 1)

  @jax.checkpoint
  def chunk_loss(h_c, t_c):
    logits = logits_f32(h_c, head)
    target_logit = jnp.take_along_axis(logits, jnp.maximum(t_c, 0)[..., None], axis=-1)[..., 0]
    valid = t_c >= 0
    return jnp.sum(jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - target_logit, 0.0))

  def body(total, xs):
    return total + chunk_loss(*xs), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t))
  return total, jnp.sum(targets >= 0).astype(jnp.float32)


@jax.custom_vjp
def logits_f32(h: jax.Array, head: jax.Array) -> jax.Array:
  """`h @ head.astype(h.dtype)` with float32 output: h `[..., d]` (compute dtype), head `[d, V]`
  float32 master -> logits float32 `[..., V]`.

  The backward pass rounds the float32 logit cotangent to h's dtype, so both backward matmuls run
  in that dtype (bf16 tensor cores on GPU; JAX's own transpose would promote them to float32), and
  returns the head's gradient in float32, so summing it over chunks loses nothing.
  """
  return jnp.dot(h, head.astype(h.dtype), preferred_element_type=jnp.float32)


def _logits_fwd(h, head):
  return logits_f32(h, head), (h, head)


def _logits_bwd(residuals, g):
  h, head = residuals
  g = g.astype(h.dtype)
  d_h = jnp.dot(g, head.astype(h.dtype).T, preferred_element_type=jnp.float32)
  d_head = jnp.dot(h.reshape(-1, h.shape[-1]).T, g.reshape(-1, g.shape[-1]),
                   preferred_element_type=jnp.float32)
  return d_h.astype(h.dtype), d_head.astype(head.dtype)


logits_f32.defvjp(_logits_fwd, _logits_bwd)
