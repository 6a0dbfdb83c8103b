"""Pallas (Triton backend) kernel: N:M mask + ternary quantization + 2-bit packing in one pass.

Program (i, j) reads one `[TILE_K, block_n]` tile of the latent weight and writes its
`[PLANE_ROWS, block_n]` packed bytes. Group member r of every N:M group in plane q is loaded as a
strided `[PLANE_ROWS / m, block_n]` slab (rows q·32 + r, r + m, ...), so ranking a group is
elementwise work across m slabs, and member r's byte row lands at rows r, r + m, ... of the output.
gamma comes in as a per-column scale (its global mean is a separate reduction). The output is
the format-v1 byte order `[Kp / 4, N]`; the caller transposes it to format v2 (`[N, Kp / 4]`):
storing the transposed tiles here scatters each group member's bytes at a stride of m, which made
the kernel 13-26 % slower on the H200 (docs/kernels.md), more than the transpose costs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K

SUPPORTED_M = (2, 4, 8, 16)


def _codes(v: jax.Array, scale: jax.Array) -> jax.Array:
  """Ternary code t + 1 of `clip(round_half_even(v / scale), -1, 1)`, as int32."""
  r = v / scale
  return 1 + (r > 0.5).astype(jnp.int32) - (r < -0.5).astype(jnp.int32)


def _kernel(w_ref, s_ref, o_ref, *, n: int | None, m: int | None):
  scale = s_ref[...][None, :]
  if n is None:
    byte = sum(_codes(w_ref[pl.ds(q * PLANE_ROWS, PLANE_ROWS), :].astype(jnp.float32), scale)
               << (2 * q) for q in range(4))
    o_ref[...] = byte.astype(jnp.uint8)
    return
  rows = PLANE_ROWS // m
  bytes_ = [0] * m
  for q in range(4):
    vals = [w_ref[pl.ds(q * PLANE_ROWS + r, rows, stride=m), :].astype(jnp.float32)
            for r in range(m)]
    mags = [jnp.where(v != v, jnp.inf, jnp.abs(v)) for v in vals]
    for r in range(m):
      beaten = sum(((mags[j] >= mags[r]) if j < r else (mags[j] > mags[r])).astype(jnp.int32)
                   for j in range(m) if j != r)
      code = jnp.where(beaten < n, _codes(vals[r], scale), 1)
      bytes_[r] = bytes_[r] + (code << (2 * q))
  for r in range(m):
    o_ref[pl.ds(r, rows, stride=m), :] = bytes_[r].astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("n", "m", "block_n", "interpret"))
def mask_quantize_pack(w: jax.Array, col_scale: jax.Array, *, n: int | None, m: int | None,
                       block_n: int, interpret: bool = False) -> jax.Array:
  """Packed codes of `nm_mask(w) * clip(round(w / col_scale), -1, 1)` in the format-v1 byte
  order, uint8 `[Kp / 4, N]` (transpose for format v2).

  w: float `[Kp, N]`, Kp a multiple of TILE_K and N of block_n; col_scale: float32 `[N]`, gamma
  per column already clamped to >= eps; (n, m): the pattern with m in SUPPORTED_M, or None, None.
  """
  kp, cols = w.shape
  return pl.pallas_call(
      functools.partial(_kernel, n=n, m=m),
      out_shape=jax.ShapeDtypeStruct((kp // 4, cols), jnp.uint8),
      grid=(kp // TILE_K, cols // block_n),
      in_specs=[pl.BlockSpec((TILE_K, block_n), lambda i, j: (i, j)),
                pl.BlockSpec((block_n,), lambda i, j: (j,))],
      out_specs=pl.BlockSpec((PLANE_ROWS, block_n), lambda i, j: (i, j)),
      compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
  )(w, col_scale)
