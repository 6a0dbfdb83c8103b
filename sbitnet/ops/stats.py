"""Training-time statistics of masks and effective weights (all jit-safe, float32 results)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from sbitnet.ops.quantizers import absmean_scale, ternary_codes


def mask_flip_rate(prev_mask: jax.Array, mask: jax.Array) -> jax.Array:
  """Fraction of mask entries that changed: `mean(prev_mask != mask)`."""
  if prev_mask.shape != mask.shape:
    raise ValueError(f"mask shapes differ: {prev_mask.shape} vs {mask.shape}.")
  return jnp.mean(prev_mask != mask, dtype=jnp.float32)


def zero_fraction(w: jax.Array) -> jax.Array:
  """Fraction of exact zeros in `w` (for `W_eff`: at least 1 - n/m, plus ternary zeros)."""
  return jnp.mean(w == 0, dtype=jnp.float32)


def ternary_histogram(t: jax.Array) -> jax.Array:
  """Fractions of -1, 0 and +1 in the int8 codes `t`, float32 `[3]`."""
  return jnp.stack([jnp.mean(t == v, dtype=jnp.float32) for v in (-1, 0, 1)])


def weight_stats(w: jax.Array, split: Sequence[int] | None = None) -> dict[str, jax.Array]:
  """gamma (per fused sub-matrix) and the {-1, 0, +1} histogram of the dense ternary codes of `w`."""
  gamma = absmean_scale(w, split)
  return {"gamma": gamma, "ternary_histogram": ternary_histogram(ternary_codes(w, gamma, split))}
