"""Unfused XLA composition of `sbitnet.ops`: N:M mask, absmean ternary quantization, then pack."""

from __future__ import annotations

from typing import Sequence

import jax

from sbitnet.kernels.ternary_matmul.pack import PackedTernary, pack
from sbitnet.ops import absmean_ternary, nm_mask


def sparse_quantize_pack(w: jax.Array, n: int | None, m: int | None,
                         split: Sequence[int] | None = None) -> PackedTernary:
  """`pack(nm_mask(w, n, m) * t, gamma)` with `(t, gamma) = absmean_ternary(w, split)` (gamma
  from the dense `w`: quant-then-mask). w: float `[K, N]`; groups of m run along K."""
  t, gamma = absmean_ternary(w, split)
  if n is not None:
    t = t * nm_mask(w, n, m, axis=0).astype(t.dtype)
  return pack(t, gamma, split)
