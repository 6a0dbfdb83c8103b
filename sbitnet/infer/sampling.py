"""Next-token sampling from logits: greedy, temperature, top-k, top-p (pure, jittable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_sampling(temperature: float, top_k: int, top_p: float, vocab_size: int) -> None:
  """Raises a ValueError naming the first sampling setting out of its range."""
  if not temperature >= 0.0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy).")
  if not 0 <= top_k <= vocab_size:
    raise ValueError(f"top_k={top_k} must be in [0, {vocab_size}] (the vocabulary; 0 = all).")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p} must be in (0, 1] (1 = no nucleus cut).")


def sample_tokens(logits: jax.Array, key: jax.Array, *, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """logits `[B, V]` -> int32 tokens `[B]`.

  temperature 0 is greedy (argmax). Otherwise logits / temperature, restricted to the `top_k`
  largest (0 = all) and to the smallest set whose probability reaches `top_p`, then sampled.
  Out-of-range settings (temperature < 0, top_k < 0 or above V, top_p outside (0, 1]) raise.
  """
  check_sampling(temperature, top_k, top_p, logits.shape[-1])
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
