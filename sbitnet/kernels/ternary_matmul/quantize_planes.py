"""Pallas (Triton backend): one pass that prepares activations for the Mosaic GPU 2-bit kernel.

Per row r of x `[M, K]` (float), bit for bit as `absmax_int8`:

  amax = max_k |x[r, k]|,   s = 127 / max(amax, EPS),   q = clip(round(x[r] · s), -128, 127)
  x_planes[r] = q in the kernel's plane order (K zero-padded to a multiple of STEP_K),
  scale[r] = 1 / s,   offset[r] = sum of q over planes 0-2.

Plane order: within each step of STEP_K rows, column `128q + 32t + j` holds K row `128t + 32q + j`
(plane q of format tile t = 0..3), so that plane q of a step's `[n, 128]` code bytes multiplies
one contiguous `[M, 128]` block of x. The kernel's planes 0-2 multiply c = t + 1 instead of t, so
its sums exceed x·t by `offset`, which its epilogue subtracts.

In XLA that is three kernels per call (the absmax reduction, the quantization with the reordering,
the offset reduction), each a launch of a few microseconds at decode sizes; here it is one. Each
program holds one whole row in registers (K up to 32768), loading it already in plane order (a
gather of 32-element runs), so x is read once. Rows past M (up to `rows`) come out zero, with
scale 0, as XLA's padding made them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K
from sbitnet.kernels.ternary_matmul.pallas_triton import divide_as_xla
from sbitnet.ops.quantizers import EPS

# K rows per step of the Mosaic 2-bit kernel: four format tiles, so that a step's code bytes are
# 128 wide (one 128-byte swizzle row) and each plane of them is a whole [rows, 128] wgmma operand.
STEP_K = 4 * TILE_K
STEP_BYTES = STEP_K // 4
MAX_K = 32768  # one row in registers: 64 float32 per thread at 16 warps


def _source_columns(width: int) -> jax.Array:
  """int32 `[width]`: the K row that plane-order column p holds."""
  p = jax.lax.broadcasted_iota(jnp.int32, (width,), 0)
  within = p % STEP_K
  plane, tile = within // STEP_BYTES, within % STEP_BYTES // PLANE_ROWS
  return p - within + tile * STEP_BYTES + plane * PLANE_ROWS + p % PLANE_ROWS


def _round(v: jax.Array, asm: bool) -> jax.Array:
  """`jnp.round` (to nearest, ties to even) of float32 as int32; on the GPU one `cvt.rni`, which
  also keeps the multiply before it from being fused into an FMA (that would round the exact
  product instead of the float32 one XLA rounds)."""
  if not asm:
    return jnp.round(v).astype(jnp.int32)
  [r] = pltriton.elementwise_inline_asm(
      "cvt.rni.s32.f32 $0, $1;", args=[v], constraints="=r,r", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.int32)])
  return r


def _kernel(x_ref, q_ref, scale_ref, offset_ref, *, width: int, asm: bool):
  row = pl.program_id(0)
  m, k = x_ref.shape
  ks = q_ref.shape[1]
  real = row < m
  columns = _source_columns(width)
  x = pltriton.load(x_ref.at[jnp.minimum(row, m - 1), columns], mask=(columns < k) & real,
                    other=0).astype(jnp.float32)
  s = divide_as_xla(jnp.full((1,), 127.0, jnp.float32),
                    jnp.maximum(jnp.max(jnp.abs(x)), EPS)[None], asm)
  if not asm:  # keep XLA from rewriting 1 / (127 / a) as a · (1 / 127), which rounds otherwise
    s = jax.lax.optimization_barrier(s)
  q = jnp.clip(_round(x * s, asm), -128, 127)
  place = jax.lax.broadcasted_iota(jnp.int32, (width,), 0)
  low_planes = place % STEP_K < 3 * STEP_BYTES
  offset = jnp.sum(jnp.where(low_planes, q, 0))
  pltriton.store(q_ref.at[row, pl.ds(0, width)], q.astype(jnp.int8), mask=place < ks)
  scale = jnp.where(real, divide_as_xla(jnp.ones_like(s), s, asm), 0.0)
  pltriton.store(scale_ref.at[pl.ds(row, 1)], scale)
  pltriton.store(offset_ref.at[pl.ds(row, 1)], offset[None])


@functools.partial(jax.jit, static_argnames=("rows", "interpret", "asm"))
def quantize_planes(x: jax.Array, *, rows: int, interpret: bool = False,
                    asm: bool | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x float `[M, K]` -> (x_planes int8 `[rows, Ks]`, scale float32 `[rows]`, offset int32
  `[rows]`), Ks = K rounded up to STEP_K, rows >= M: the Mosaic 2-bit kernel's inputs, `q` of
  `absmax_int8(x)` in plane order and its scale (both zero past M), and the offset. asm: inline PTX (default: unless interpreting; interpret mode computes the
  same in jnp)."""
  m, k = x.shape
  ks = -(-k // STEP_K) * STEP_K
  if not jnp.issubdtype(x.dtype, jnp.floating) or rows < m or ks > MAX_K:
    raise ValueError(f"quantize_planes takes float x [M, K] with K <= {MAX_K} and rows >= M, got "
                     f"{x.dtype} {tuple(x.shape)} and rows={rows}.")
  width = max(1 << (ks - 1).bit_length(), 1024)
  kernel = functools.partial(_kernel, width=width, asm=not interpret if asm is None else asm)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  return pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((rows, ks), jnp.int8),
                 jax.ShapeDtypeStruct((rows,), jnp.float32),
                 jax.ShapeDtypeStruct((rows,), jnp.int32)),
      grid=(rows,),
      in_specs=[whole],
      out_specs=(whole, whole, whole),
      compiler_params=pltriton.CompilerParams(num_warps=min(16, max(4, width // 1024)),
                                              num_stages=1),
      interpret=interpret,
  )(x)
