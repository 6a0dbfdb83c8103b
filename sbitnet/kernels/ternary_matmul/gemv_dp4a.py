"""Pallas (Triton backend) decode GEMV: a few int8 rows × packed 2-bit ternary weights on the CUDA
cores (`dp4a`), no tensor cores.

At one row a tensor-core dot wastes 15 of its 16 rows, and the 2-bit MMA kernel (`pallas_triton`)
measured latency-bound well below the read bandwidth; this kernel is 1.1-1.4x faster there (H200,
docs/kernels.md). Each extra row adds 4 dp4a per word, and the MMA kernel wins from two rows on
(`config.gemv_wins`).

Each program streams `block_n` rows of codes (format v2, read as 32-bit words: 16 weights each) in
steps of `block_w` words, with every x row held in registers beside them. A word of tile i at word
offset w (bytes 4w..4w+3) holds in plane q (bits 2q..2q+1 of each byte) the codes of K rows
`128 i + 32 q + 4 w .. + 3`: four consecutive rows, i.e. one 32-bit word of int8 x. So

  acc += dp4a(c_q, x_q)   over the planes q,   c_q = (word >> 2q) & 0x03030303,

where `x_q` is x's word at `32 i + 8 q + w` (the kernel loads x's words as they lie, `x_words`:
plane q of a step is a `[tiles, 8]` view of them), and the epilogue applies `x @ t = x @ c - sum(x)`
(c = t + 1, exact in int32; sum(x) from `quantize_rows`) and both scales. Per 16 weights: 7
shift/and instructions, then 4 dp4a per row; no shared memory or MMA layout in between.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K
from sbitnet.kernels.ternary_matmul.pallas_triton import call

WORD_WEIGHTS = 16  # 2-bit codes per 32-bit word
PLANE_WORDS = PLANE_ROWS // 4  # code words per format tile = int8 x words per plane of a tile
_PLANE_MASK = 0x03030303


@dataclasses.dataclass(frozen=True)
class GemvConfig:
  """Code rows (output columns) per program, 32-bit code words per step, warps per program."""
  block_n: int = 8
  block_w: int = 128
  num_warps: int = 4
  num_stages: int = 1


def x_words(xq: jax.Array, kp: int) -> jax.Array:
  """int8 `[M, K]` (K <= kp, zero-padded to kp) -> int32 `[M, kp / 128, 32]`, the same bytes (a
  bitcast, no copy where K = kp): entry `[r, i, 8 q + w]` is x row r's word of K rows
  `128 i + 32 q + 4 w .. + 3` (little-endian bytes), the word the codes' word `8 i + w` meets in
  plane q."""
  m, k = xq.shape
  xq = jnp.pad(xq, ((0, 0), (0, kp - k))).reshape(m, kp // TILE_K, TILE_K // 4, 4)
  return jax.lax.bitcast_convert_type(xq, jnp.int32)


def _planes(words: jax.Array, asm: bool) -> list[jax.Array]:
  """The four code planes `(words >> 2q) & 0x03030303` of int32 words (one byte per weight)."""
  if not asm:
    return [(words >> (2 * q)) & _PLANE_MASK for q in range(4)]
  shape = jax.ShapeDtypeStruct(words.shape, jnp.int32)
  return [pltriton.elementwise_inline_asm(
      (f"shr.b32 $0, $1, {2 * q}; " if q else "mov.b32 $0, $1; ") + "and.b32 $0, $0, 0x03030303;",
      args=[words], constraints="=r,r", pack=1, result_shape_dtypes=[shape])[0]
          for q in range(4)]


def _dp4a(planes: list[jax.Array], xs: list[jax.Array], acc: jax.Array, asm: bool) -> jax.Array:
  """`acc + sum_q sum_b byte_b(planes[q]) * sbyte_b(xs[q])`: four `dp4a.u32.s32` (codes unsigned,
  x signed) chained through one register."""
  if not asm:
    for p, x in zip(planes, xs):
      for b in range(4):
        acc += ((p >> (8 * b)) & 0xFF).astype(jnp.int32) * ((x << (24 - 8 * b)) >> 24)
    return acc
  text = ("{ .reg .s32 a; dp4a.u32.s32 a, $1, $5, $9; dp4a.u32.s32 a, $2, $6, a; "
          "dp4a.u32.s32 a, $3, $7, a; dp4a.u32.s32 $0, $4, $8, a; }")
  [out] = pltriton.elementwise_inline_asm(
      text, args=[*planes, *xs, acc], constraints="=r" + ",r" * 9, pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(acc.shape, jnp.int32)])
  return out


def _kernel(x_ref, w_ref, rs_ref, sum_ref, cs_ref, o_ref, *, block_w: int, asm: bool):
  """x_ref: `x_words` `[M, tiles, 32]`. Output columns `[j * block_n, (j + 1) * block_n)` of every
  row; words past the end of the codes load as zeros (code 0 contributes nothing to x @ c)."""
  j = pl.program_id(0)
  (m, tiles, _), (bn, words) = x_ref.shape, w_ref.shape
  tiles_per_step = block_w // PLANE_WORDS

  def step(s, accs):
    ok = s * block_w + jax.lax.broadcasted_iota(jnp.int32, (1, block_w), 1) < words
    planes = _planes(pltriton.load(w_ref.at[:, pl.ds(s * block_w, block_w)], mask=ok, other=0),
                     asm)
    tile = s * tiles_per_step
    tile_ok = tile + jax.lax.broadcasted_iota(
        jnp.int32, (1, tiles_per_step, PLANE_WORDS), 1) < tiles
    new = []
    for r, acc in enumerate(accs):
      # Plane q of each tile is x's words 8q .. 8q + 7 of that tile: a strided view, no copy.
      xs = [pltriton.load(x_ref.at[pl.ds(r, 1), pl.ds(tile, tiles_per_step),
                                   pl.ds(q * PLANE_WORDS, PLANE_WORDS)],
                          mask=tile_ok, other=0).reshape(1, block_w) for q in range(4)]
      new.append(_dp4a(planes, [jnp.broadcast_to(x, (bn, block_w)) for x in xs], acc, asm))
    return tuple(new)

  zeros = jnp.zeros((bn, block_w), jnp.int32)
  accs = jax.lax.fori_loop(0, pl.cdiv(words, block_w), step, (zeros,) * m)
  col_scale = cs_ref[...]
  for r, acc in enumerate(accs):
    one = pl.ds(r, 1)
    dot = jnp.sum(acc, axis=1) - pltriton.load(sum_ref.at[one])
    y = dot.astype(jnp.float32) * pltriton.load(rs_ref.at[one]) * col_scale
    pltriton.store(o_ref.at[one, pl.ds(j * bn, bn)], y.astype(o_ref.dtype)[None, :])


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def matmul(xq: jax.Array, row_scale: jax.Array, row_sum: jax.Array, codes: jax.Array,
           col_scale: jax.Array, *, config: GemvConfig, out_dtype, interpret: bool = False,
           asm: bool | None = None, out_init: jax.Array | None = None) -> jax.Array:
  """`(xq @ t) * row_scale[:, None] * col_scale[None, :]` for a few rows.

  xq, row_scale, row_sum: `quantize_rows(x, rows=M, plane_order=False)`: int8 `[M, K]`, float32
  `[M]` and int32 `[M]` (the sum of each row of xq); codes: uint8 `[N, Kp / 4]` (format v2), N a
  multiple of `block_n`; col_scale: float32 `[N]`. Returns `[M, N]` of `out_dtype`.
  asm: inline PTX (default: unless interpreting; interpret mode computes the same in jnp).
  `out_init`, if given, is the output buffer (aliased): tiles the kernel fails to write keep it.
  """
  (m, k), (n, nbytes), c = xq.shape, codes.shape, config
  kp = nbytes * 4
  powers_of_two = all(b > 0 and not b & (b - 1) for b in (c.block_n, c.block_w))
  if (xq.dtype != jnp.int8 or k > kp or n % c.block_n or not powers_of_two
      or c.block_w < PLANE_WORDS):
    raise ValueError(f"{c} does not tile xq {xq.dtype} {tuple(xq.shape)} x codes "
                     f"{tuple(codes.shape)}: xq must be int8 with K <= {kp}, block_n="
                     f"{c.block_n} must divide N={n} (N padded to 16 by ternary_matmul), and "
                     f"block_n and block_w={c.block_w} be powers of two with block_w >= "
                     f"{PLANE_WORDS} (one format tile).")
  words = jax.lax.bitcast_convert_type(codes.reshape(n, kp // WORD_WEIGHTS, 4), jnp.int32)
  kernel = functools.partial(_kernel, block_w=c.block_w,
                             asm=not interpret if asm is None else asm)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  in_specs = [whole, pl.BlockSpec((c.block_n, kp // WORD_WEIGHTS), lambda j: (j, 0)), whole,
              whole, pl.BlockSpec((c.block_n,), lambda j: (j,))]
  return call(kernel, [x_words(xq, kp), words, row_scale, row_sum, col_scale], in_specs, whole,
              jax.ShapeDtypeStruct((m, n), out_dtype), grid=(n // c.block_n,), config=c,
              interpret=interpret, out_init=out_init)
