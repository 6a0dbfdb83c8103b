"""`sparse_quantize_pack`: latent weight → packed N:M-sparse ternary weight, fused."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from sbitnet.kernels.sparse_quantize import pallas_triton, reference
from sbitnet.kernels.ternary_matmul.config import block_n_for
from sbitnet.kernels.ternary_matmul.pack import PackedTernary, padded_rows
from sbitnet.ops import absmean_scale, scale_per_column
from sbitnet.ops.quantizers import EPS
from sbitnet.ops.validation import check_float, check_pattern, check_split

IMPLEMENTATIONS = ("xla", "pallas")


def sparse_quantize_pack(w: jax.Array, n: int | None = None, m: int | None = None,
                         split: Sequence[int] | None = None, *,
                         implementation: str | None = None) -> PackedTernary:
  """Masks, quantizes and packs a latent weight in one pass (quant-then-mask, as in the paper).

  Args:
    w: float `[K, N]` latent weight (Flax `[in, out]`); N:M groups run along K.
    n, m: the pattern (both None: dense ternary).
    split: sizes of fused sub-matrices along N, one gamma = mean|w| each (over the dense w).
    implementation: "xla" (the unfused `sbitnet.ops` composition), "pallas" (the fused kernel;
      interpret mode off GPU; m must be in 2, 4, 8, 16), or None: Pallas on GPU where it applies.

  Returns:
    `pack(nm_mask(w, n, m) * t, gamma, split)` with `(t, gamma) = absmean_ternary(w, split)`.
  """
  check_float("w", w)
  if w.ndim != 2:
    raise ValueError(f"w must be a 2-D [in, out] weight, got shape {tuple(w.shape)}.")
  check_pattern(n, m, w.shape, 0)
  split = check_split(split, w.shape)
  if implementation not in (None,) + IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is not valid; choose one of "
                     f"{IMPLEMENTATIONS} or None.")
  fits = n is None or m in pallas_triton.SUPPORTED_M
  if implementation == "pallas" and not fits:
    raise ValueError(f"the Pallas kernel supports m in {pallas_triton.SUPPORTED_M} (got {n}:{m}); "
                     "use implementation='xla'.")
  if implementation is None:
    implementation = "pallas" if jax.default_backend() == "gpu" and fits else "xla"
  if implementation == "xla":
    return reference.sparse_quantize_pack(w, n, m, split)
  k, cols = w.shape
  gamma = absmean_scale(w, split)
  col_scale = jnp.broadcast_to(scale_per_column(gamma, split), (cols,))
  c16 = -(-cols // 16) * 16
  wp = jnp.pad(w, ((0, padded_rows(k) - k), (0, c16 - cols)))
  sp = jnp.pad(jnp.maximum(col_scale, EPS), (0, c16 - cols), constant_values=1.0)
  codes = pallas_triton.mask_quantize_pack(
      wp, sp, n=n, m=m, block_n=block_n_for(c16, 64),
      interpret=jax.default_backend() != "gpu")
  return PackedTernary(codes[:, :cols].T, col_scale, in_features=k, split=split)
