"""Pallas (Triton backend) kernel: packed 2-bit ternary weights × bf16/f16 or int8 activations.

One kernel for M up to a few hundred rows: block_m = 16 with split-K over the contraction for
decode (so that narrow layers still fill the GPU), block_m = 64 with swap-AB above. Each program
streams its `[block_n, Kp/4]` block of packed bytes (format v2, K-major) once, one format tile
(`PLANE_ROWS` bytes per column) per step. Each step decodes the four 2-bit planes of the loaded
bytes in registers with SIMD-within-a-register inline PTX (`_plane`) and feeds four tensor-core
dots of `[block_m, 32]` activations with the `[block_n, 32]` plane, both K-major:

  int8:  plane value v = c          (c = t + 1 in {0, 1, 2}),  x @ t = x @ v - sum(x)
  float: plane value v = 1 + c / 4  (exact in bf16/f16),       x @ t = 4 (x @ v) - 5 sum(x)

accumulated in int32 (exact) or float32; the epilogue applies the correction and both scales.
Triton decides how the decoded planes reach the MMA (with format v1 the SASS showed the packed
bytes staged in shared memory and decoded in the MMA operand registers; not re-checked for v2).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K


@dataclasses.dataclass(frozen=True)
class Config:
  """Tile sizes and launch parameters (split-K programs get `ceil(K tiles / split_k)` tiles)."""
  block_m: int = 16
  block_n: int = 128
  split_k: int = 1
  num_warps: int = 4
  num_stages: int = 3
  swap_ab: bool = False  # the weights as the MMA's M operand: out^T = t^T @ x^T


# Float planes: c goes to the two top mantissa bits of 1.0, giving 1 + c/4: (bits of 1.0, the
# lower of those two bits). prmt selectors put bytes 0, 1 (2, 3) of a word at the low byte of
# each 16-bit lane.
_FLOAT_MAGIC = {jnp.dtype(jnp.bfloat16): (0x3F80, 5), jnp.dtype(jnp.float16): (0x3C00, 8)}
_LANE_SELECTORS = (0x1100, 0x3322)


def _plane(packed: jax.Array, q: int, dtype, asm: bool) -> jax.Array:
  """Plane q of packed uint8 `[r, n]` as `dtype` `[r, n]`: c = (packed >> 2q) & 3 for int8,
  1 + c / 4 for bf16/f16.

  On the GPU (`asm=True`) this is inline PTX on 32-bit words holding 4 packed bytes: int8 takes
  shr + and per 4 weights; floats copy byte i into the low byte of 16-bit lane i (prmt; the high
  byte is masked off below), shift the plane's bits to the two top mantissa bits, keep those and
  OR in the bits of 1.0 (lop3). With the jnp form compiled instead, the kernel took 1.4× (int8) to
  1.6× (bf16) as long at 8192→28672, M = 16 (docs/kernels.md). Pallas interpret mode cannot run
  inline assembly, so there (`asm=False`) the same values come from jnp, and the CPU tests cover
  the rest of the kernel.
  """
  dtype = jnp.dtype(dtype)
  if not asm:
    c = (packed >> (2 * q)) & 3
    if dtype == jnp.int8:
      return c.astype(jnp.int8)
    return (c.astype(jnp.float32) * 0.25 + 1.0).astype(dtype)
  if dtype == jnp.int8:
    shift = f"shr.b32 $0, $1, {2 * q}; and.b32 $0, $0, 0x03030303;"
    [out] = pltriton.elementwise_inline_asm(
        shift if q else "and.b32 $0, $1, 0x03030303;", args=[packed], constraints="=r,r", pack=4,
        result_shape_dtypes=[jax.ShapeDtypeStruct(packed.shape, jnp.int8)])
    return out
  one, top = _FLOAT_MAGIC[dtype]
  d = top - 2 * q
  shift = "" if d == 0 else (f"shl.b32 $0, $0, {d}; shl.b32 $1, $1, {d};" if d > 0 else
                             f"shr.b32 $0, $0, {-d}; shr.b32 $1, $1, {-d};")
  mask = (3 << top) * 0x10001
  lo, hi = _LANE_SELECTORS
  asm_text = (f"prmt.b32 $0, $2, $2, {lo:#x}; prmt.b32 $1, $2, $2, {hi:#x}; " + shift +
              f"lop3.b32 $0, $0, {mask:#x}, {one * 0x10001:#x}, 0xEA; "
              f"lop3.b32 $1, $1, {mask:#x}, {one * 0x10001:#x}, 0xEA;")
  [out] = pltriton.elementwise_inline_asm(
      asm_text, args=[packed], constraints="=r,=r,r", pack=4,
      result_shape_dtypes=[jax.ShapeDtypeStruct(packed.shape, dtype)])
  return out


def _correction(acc_dtype) -> tuple[int, int]:
  """(a, b) with x @ t = a (x @ v) - b sum(x) for the plane values v of `_plane`."""
  return (1, 1) if acc_dtype == jnp.int32 else (4, 5)


def _kernel(x_ref, w_ref, rs_ref, cs_ref, o_ref, *, block_m: int, tiles: int, acc_dtype,
            asm: bool, swap_ab: bool):
  """One `[block_m, block_n]` output tile of K split `program_id(2)`. x, the row scale (None for
  float x) and the output are whole arrays (no padding): rows past M and columns past K load as
  zeros, and only rows below M are stored."""
  j, i, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  (m, k), (bn, nbytes) = x_ref.shape, w_ref.shape
  last_tile = nbytes // PLANE_ROWS - 1
  rows = pl.ds(i * block_m, block_m)
  row_ok = i * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m,), 0) < m
  # Both operands are K-major ([rows, 32]); swap-AB makes the weights the MMA's M operand.
  contract = (((1,), (1,)), ((), ()))

  def step(t, carry):
    acc, x_acc = carry
    tile = split * tiles + t
    # Tiles past the end (uneven split-K) re-read the last tile against x loaded as zeros.
    packed = w_ref[:, pl.ds(jnp.minimum(tile, last_tile) * PLANE_ROWS, PLANE_ROWS)]
    for q in range(4):
      v = _plane(packed, q, x_ref.dtype, asm)
      col = tile * TILE_K + q * PLANE_ROWS
      col_ok = col + jax.lax.broadcasted_iota(jnp.int32, (PLANE_ROWS,), 0) < k
      x = pltriton.load(x_ref.at[rows, pl.ds(col, PLANE_ROWS)],
                        mask=row_ok[:, None] & col_ok[None, :], other=0)
      acc += jax.lax.dot_general(*((v, x) if swap_ab else (x, v)), contract,
                                 preferred_element_type=acc_dtype)
      x_acc += x.astype(acc_dtype)  # summed over K once, after the loop
    return acc, x_acc

  acc = jnp.zeros((bn, block_m) if swap_ab else (block_m, bn), acc_dtype)
  x_acc = jnp.zeros((block_m, PLANE_ROWS), acc_dtype)
  acc, x_acc = jax.lax.fori_loop(0, tiles, step, (acc, x_acc))
  a, b = _correction(acc_dtype)
  acc = a * (acc.T if swap_ab else acc) - b * jnp.sum(x_acc, axis=1)[:, None]
  y = acc.astype(jnp.float32)
  if rs_ref is not None:
    y *= pltriton.load(rs_ref.at[rows], mask=row_ok, other=1.0)[:, None]
  y *= cs_ref[...][None, :]
  pltriton.store(o_ref.at[split, rows, pl.ds(j * bn, bn)], y.astype(o_ref.dtype),
                 mask=row_ok[:, None])


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def matmul(x: jax.Array, codes: jax.Array, col_scale: jax.Array, *, row_scale: jax.Array | None,
           config: Config, out_dtype, interpret: bool = False, asm: bool | None = None,
           out_init: jax.Array | None = None) -> jax.Array:
  """Partial products `out[s] = (x @ t[K-split s]) * row_scale[:, None] * col_scale[None, :]`.

  x: bf16/f16, or int8 from `quantize_rows` (natural order), `[M, K]` (any M, K <= Kp: no
  padding needed); codes: uint8 `[N, Kp / 4]` (format v2), N a multiple of `block_n`; col_scale:
  float32 `[N]`; row_scale: float32 `[M]`, the int8 activations' scale, or None (float x).
  asm: decode planes with inline PTX (default: unless interpreting).
  Returns `[split_k, M, N]` of `out_dtype` (sum over axis 0 for the product). `out_init`, if given,
  is the output buffer (aliased), so tiles the kernel fails to write keep its contents.
  """
  (m, k), (n, nbytes), c = x.shape, codes.shape, config
  if k > nbytes * 4 or n % c.block_n or c.block_m % 16:
    raise ValueError(f"{c} does not tile x {tuple(x.shape)} x codes {tuple(codes.shape)}: K must "
                     f"be <= {nbytes * 4}, block_n must divide N and block_m be a multiple of 16.")
  tiles = -(-nbytes // PLANE_ROWS // c.split_k)
  kernel = functools.partial(_kernel, block_m=c.block_m, tiles=tiles,
                             acc_dtype=jnp.int32 if x.dtype == jnp.int8 else jnp.float32,
                             asm=not interpret if asm is None else asm, swap_ab=c.swap_ab)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  args = [x, codes, col_scale]
  in_specs = [whole, pl.BlockSpec((c.block_n, nbytes), lambda j, i, s: (j, 0)),
              pl.BlockSpec((c.block_n,), lambda j, i, s: (j,))]
  if row_scale is None:
    kernel = functools.partial(_without_row_scale, kernel)
  else:
    args.insert(2, row_scale)
    in_specs.insert(2, whole)
  return call(kernel, args, in_specs, whole, jax.ShapeDtypeStruct((c.split_k, m, n), out_dtype),
              grid=(n // c.block_n, -(-m // c.block_m), c.split_k), config=c,
              interpret=interpret, out_init=out_init)


def _without_row_scale(kernel, x_ref, w_ref, cs_ref, o_ref):
  kernel(x_ref, w_ref, None, cs_ref, o_ref)


def call(kernel, args: list[jax.Array], in_specs: list[pl.BlockSpec], out_spec: pl.BlockSpec,
         out_shape: jax.ShapeDtypeStruct, *, grid: tuple[int, ...], config, interpret: bool,
         out_init: jax.Array | None) -> jax.Array:
  """`pl.pallas_call` of `kernel(*in_refs, out_ref)` with the config's warps and stages; `out_init`
  (if given, of `out_shape`) is aliased as the output buffer, so what the kernel does not write
  keeps its contents."""
  aliases = {}
  if out_init is not None:
    args, in_specs = [*args, out_init], [*in_specs, pl.BlockSpec(memory_space=pl.ANY)]
    aliases = {len(args) - 1: 0}
    kernel = functools.partial(_without_out_init, kernel)
  return pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid=grid,
      in_specs=in_specs,
      out_specs=out_spec,
      input_output_aliases=aliases,
      compiler_params=pltriton.CompilerParams(num_warps=config.num_warps,
                                              num_stages=config.num_stages),
      interpret=interpret,
  )(*args)


def _without_out_init(kernel, *refs):
  *in_refs, _init_ref, o_ref = refs
  kernel(*in_refs, o_ref)
