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
  `logits = h @ head` (float32 accumulation),
  `loss = logsumexp(logits) - logits[target]`. Returns float32 scalars `(sum, count)`.
  """
  b, length, d = hidden.shape
  # Chunks run along the sequence and span every row, so a batch sharded over devices stays
  # sharded: each device forms the logits of its own rows only.
  span = max(1, min(chunk // b, length))
  pad = -length % span
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, span, d).swapaxes(0, 1)
  t = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=-1).reshape(b, -1, span).swapaxes(0, 1)
  head = head.astype(hidden.dtype)

  @jax.checkpoint
  def chunk_loss(h_c, t_c):
    logits = jnp.dot(h_c, head, preferred_element_type=jnp.float32)
    target_logit = jnp.take_along_axis(logits, jnp.maximum(t_c, 0)[..., None], axis=-1)[..., 0]
    valid = t_c >= 0
    return jnp.sum(jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - target_logit, 0.0))

  def body(total, xs):
    return total + chunk_loss(*xs), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t))
  return total, jnp.sum(targets >= 0).astype(jnp.float32)
