"""Chunked cross-entropy: logits are formed `chunk` tokens at a time and recomputed in the
backward pass, so `[batch, seq, vocab]` float32 logits never exist at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                          chunk: int) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy and token count.

  hidden `[B, T, d]` (compute dtype), head `[d, V]` (float32 master), targets int32 `[B, T]`
  (negative = ignored). Per chunk of `chunk` tokens: `logits = h @ head` (float32 accumulation),
  `loss = logsumexp(logits) - logits[target]`. Returns float32 scalars `(sum, count)`.
  """
  d = hidden.shape[-1]
  h = hidden.reshape(-1, d)
  t = targets.reshape(-1)
  chunk = min(chunk, h.shape[0])
  pad = -h.shape[0] % chunk
  h = jnp.pad(h, ((0, pad), (0, 0)))
  t = jnp.pad(t, (0, pad), constant_values=-1)
  head = head.astype(hidden.dtype)

  @jax.checkpoint
  def chunk_loss(h_c, t_c):
    logits = jnp.dot(h_c, head, preferred_element_type=jnp.float32)
    target_logit = jnp.take_along_axis(logits, jnp.maximum(t_c, 0)[:, None], axis=-1)[:, 0]
    valid = t_c >= 0
    return jnp.sum(jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - target_logit, 0.0))

  def body(total, xs):
    return total + chunk_loss(*xs), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                          (h.reshape(-1, chunk, d), t.reshape(-1, chunk)))
  return total, jnp.sum(targets >= 0).astype(jnp.float32)
