"""Rotary position embeddings (LLaMA / Qwen "rotate half" convention)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos, sin of shape `[..., T, head_dim]` (float32) for integer `positions` `[..., T]`.

  Frequencies `theta ** (-2i / head_dim)` for i < head_dim/2, repeated for both halves.
  """
  if head_dim < 2 or head_dim % 2:
    raise ValueError(f"head_dim={head_dim}: RoPE rotates pairs of features, so it must be even.")
  inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x `[B, T, heads, head_dim]`, cos/sin `[B or 1, T, head_dim]` -> rotated x in x.dtype:
  `x * cos + rotate_half(x) * sin` with `rotate_half([a, b]) = [-b, a]`."""
  b, t, _, d = x.shape if x.ndim == 4 else (None,) * 4
  if (x.ndim != 4 or d % 2 or cos.shape != sin.shape or cos.ndim != 3
      or cos.shape[0] not in (1, b) or cos.shape[1:] != (t, d)):
    raise ValueError(f"apply_rope takes x [B, T, heads, head_dim] with an even head_dim and cos, "
                     f"sin [B or 1, T, head_dim] (rope_tables of positions [B or 1, T]); got x "
                     f"{tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}.")
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)
