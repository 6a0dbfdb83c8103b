"""Pallas (Triton backend) decode GEMV: a few int8 rows × packed 2-bit ternary weights on the CUDA
cores (`dp4a`), no tensor cores.

At one row a tensor-core dot wastes 15 of its 16 rows, and the 2-bit MMA kernel (`pallas_triton`)
measured latency-bound well below the read bandwidth; this kernel is 1.1-1.4x faster there (H200,
docs/kernels.md). Each extra row adds 4 dp4a per word, so the MMA kernel wins from 2-4 rows on
(`config.gemv_wins`).

Each program streams `block_n` rows of codes (format v2, read as 32-bit words: 16 weights each) in
steps of `block_w` words, with every x row held in registers beside them. A word of tile i at word
offset w (bytes 4w..4w+3) holds in plane q (bits 2q..2q+1 of each byte) the codes of K rows
`128 i + 32 q + 4 w .. + 3`: four consecutive rows, i.e. one 32-bit word of int8 x. So

  acc += dp4a(c_q, x_q)   over the planes q,   c_q = (word >> 2q) & 0x03030303,

where `x_q` is x's word at `32 i + 8 q + w` (`x_planes` lays x out as `[4, M, Kp / 16]` so that
the kernel loads it at the codes' word index), and the epilogue applies `x @ t = x @ c - sum(x)`
(c = t + 1, exact in int32) and both scales. Per 16 weights: 7 shift/and instructions, then 4
dp4a per row; no shared memory or MMA layout in between.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K
from sbitnet.kernels.ternary_matmul.pallas_triton import absmax_multiplier, call, row_scale
from sbitnet.ops.quantizers import absmax_int8_with_absmax

WORD_WEIGHTS = 16  # 2-bit codes per 32-bit word
WORDS_PER_TILE = PLANE_ROWS // 4  # code words per format tile = int8 x words per plane tile
# Where x is quantized to int8: "xla" (absmax and the int8 words, `x_planes`, by XLA ahead of the
# kernel), "absmax_xla" (XLA takes max|x| per row, the kernel quantizes), "kernel" (the kernel
# takes max|x| in a first pass over its rows, then quantizes).
QUANTIZE_MODES = ("xla", "absmax_xla", "kernel")
ABSMAX_CHUNK_TILES = 16
_PLANE_MASK = 0x03030303


@dataclasses.dataclass(frozen=True)
class GemvConfig:
  """Code rows (output columns) per program, 32-bit code words per step, warps per program, and
  where x is quantized (`QUANTIZE_MODES`)."""
  block_n: int = 8
  block_w: int = 128
  num_warps: int = 4
  num_stages: int = 1
  quantize: str = "kernel"


def x_planes(xq: jax.Array, kp: int) -> jax.Array:
  """int8 `[M, K]` (K <= kp, zero-padded to kp) -> int32 `[4, M, kp / 16]`: entry `[q, r, 8 i + w]`
  is x row r's word of K rows `128 i + 32 q + 4 w .. + 3` (little-endian bytes), the word the
  codes' word `8 i + w` meets in plane q."""
  m, k = xq.shape
  xq = jnp.pad(xq, ((0, 0), (0, kp - k))).reshape(m, kp // TILE_K, 4, PLANE_ROWS // 4, 4)
  words = jax.lax.bitcast_convert_type(xq, jnp.int32)
  return words.transpose(2, 0, 1, 3).reshape(4, m, kp // WORD_WEIGHTS)


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


def _round_to_int(v: jax.Array, asm: bool) -> jax.Array:
  """float32 -> int32, rounded half to even (`jnp.round`; Triton has no lowering for it: on the
  GPU one `cvt.rni.s32.f32` per element)."""
  if not asm:
    return jnp.round(v).astype(jnp.int32)
  [out] = pltriton.elementwise_inline_asm(
      "cvt.rni.s32.f32 $0, $1;", args=[v], constraints="=r,r", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.int32)])
  return out


def _quantized_words(x_bytes: list[jax.Array], multiplier: jax.Array, asm: bool) -> jax.Array:
  """`absmax_int8`'s `clip(round(x * s), -128, 127)` of four float arrays, packed as the bytes
  0-3 (little-endian) of int32 words of the same shape."""
  word = None
  for b, x in enumerate(x_bytes):
    q = jnp.clip(_round_to_int(x.astype(jnp.float32) * multiplier, asm), -128, 127)
    byte = (q & 0xFF) << (8 * b)
    word = byte if word is None else word | byte
  return word


def _absmax(x_ref, r: int, chunk: int) -> jax.Array:
  """max |x| of row r of x `[M, tiles, 32, 4]` (float32 `[1]`), `chunk` tiles per load."""
  tiles = x_ref.shape[1]

  def step(s, amax):
    ok = s * chunk + jax.lax.broadcasted_iota(jnp.int32, (1, chunk, *x_ref.shape[2:]), 1) < tiles
    v = pltriton.load(x_ref.at[pl.ds(r, 1), pl.ds(s * chunk, chunk)], mask=ok, other=0)
    return jnp.maximum(amax, jnp.max(jnp.abs(v.astype(jnp.float32))))

  amax = jax.lax.fori_loop(0, pl.cdiv(tiles, chunk), step, jnp.float32(0))
  return jnp.broadcast_to(amax, (1,))


def _kernel(x_ref, w_ref, amax_ref, cs_ref, o_ref, *, block_w: int, asm: bool):
  """Output columns `[j * block_n, (j + 1) * block_n)` of every row of x; words past the end of
  the codes load as zeros (code 0 contributes nothing to x @ c). sum(x) comes from the same x
  words (dp4a with bytes of 1), per program.

  x_ref is either int8 words, `x_planes` as `[4 M, words]` (plane-major; amax_ref: their float32
  absmax `[M]`), or float x `[M, Kp / 128, 32, 4]` (tile, word of the plane tile, byte: a view of
  `[M, Kp]`) quantized here, per row as `absmax_int8` does, from amax_ref or, if that is None,
  from the absmax of a first pass over the row."""
  j = pl.program_id(0)
  bn, words = w_ref.shape
  quantize = x_ref.dtype != jnp.int32
  m = x_ref.shape[0] if quantize else x_ref.shape[0] // 4
  tiles_per_step = block_w // WORDS_PER_TILE
  if amax_ref is None:
    amax = [_absmax(x_ref, r, ABSMAX_CHUNK_TILES) for r in range(m)]
  else:
    amax = [pltriton.load(amax_ref.at[pl.ds(r, 1)]) for r in range(m)]
  multiplier = [absmax_multiplier(a, asm) for a in amax]
  ones = [jnp.full((1, block_w), 0x01010101, jnp.int32)] * 4

  def x_words(s, r, ok):
    """Row r's four plane words `[1, block_w]` of step s."""
    if not quantize:
      return [pltriton.load(x_ref.at[pl.ds(q * m + r, 1), pl.ds(s * block_w, block_w)],
                            mask=ok, other=0) for q in range(4)]
    tile = s * tiles_per_step
    tile_ok = tile + jax.lax.broadcasted_iota(
        jnp.int32, (1, tiles_per_step, WORDS_PER_TILE, 1), 1) < x_ref.shape[1]
    planes = []
    for q in range(4):
      x_bytes = [pltriton.load(x_ref.at[pl.ds(r, 1), pl.ds(tile, tiles_per_step),
                                        pl.ds(q * WORDS_PER_TILE, WORDS_PER_TILE), pl.ds(b, 1)],
                               mask=tile_ok, other=0) for b in range(4)]
      planes.append(_quantized_words(x_bytes, multiplier[r], asm).reshape(1, block_w))
    return planes

  def step(s, carry):
    ok = s * block_w + jax.lax.broadcasted_iota(jnp.int32, (1, block_w), 1) < words
    planes = _planes(pltriton.load(w_ref.at[:, pl.ds(s * block_w, block_w)], mask=ok, other=0),
                     asm)
    new = []
    for r, (acc, x_acc) in enumerate(carry):
      xs = x_words(s, r, ok)
      new.append((_dp4a(planes, [jnp.broadcast_to(x, (bn, block_w)) for x in xs], acc, asm),
                  _dp4a(ones, xs, x_acc, asm)))
    return tuple(new)

  zeros = jnp.zeros((bn, block_w), jnp.int32), jnp.zeros((1, block_w), jnp.int32)
  carry = jax.lax.fori_loop(0, pl.cdiv(words, block_w), step, (zeros,) * m)
  col_scale = cs_ref[...]
  for r, (acc, x_acc) in enumerate(carry):
    dot = jnp.sum(acc, axis=1) - jnp.sum(x_acc, axis=1)
    y = dot.astype(jnp.float32) * row_scale(amax[r], asm) * col_scale
    pltriton.store(o_ref.at[pl.ds(r, 1), pl.ds(j * bn, bn)], y.astype(o_ref.dtype)[None, :])


def _without_absmax(kernel, x_ref, w_ref, cs_ref, o_ref):
  kernel(x_ref, w_ref, None, cs_ref, o_ref)


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def matmul(x: jax.Array, codes: jax.Array, col_scale: jax.Array, *, config: GemvConfig,
           out_dtype, interpret: bool = False, asm: bool | None = None,
           out_init: jax.Array | None = None) -> jax.Array:
  """`(absmax_int8(x) @ t) * col_scale[None, :]` for a few rows: x quantized per token to int8
  (`q = clip(round(x * s), -128, 127)`, `s = 127 / max(max|x|, eps)`), exact int32 products, then
  `/ s` and the column scale, bit for bit as `ternary_matmul(quantize_x=True,
  implementation="xla")`.

  x: float `[M, K]`; codes: uint8 `[N, Kp / 4]` (format v2, K <= Kp), N a multiple of `block_n`;
  col_scale: float32 `[N]`. `config.quantize` says where x is quantized (`QUANTIZE_MODES`).
  Returns `[M, N]` of `out_dtype`. asm: inline PTX (default: unless interpreting; interpret mode
  computes the same in jnp). `out_init`, if given, is the output buffer (aliased): tiles the
  kernel fails to write keep it.
  """
  (m, k), (n, nbytes), c = x.shape, codes.shape, config
  kp = nbytes * 4
  powers_of_two = all(b > 0 and not b & (b - 1) for b in (c.block_n, c.block_w))
  if (not jnp.issubdtype(x.dtype, jnp.floating) or k > kp or n % c.block_n or not powers_of_two
      or c.block_w < WORDS_PER_TILE or c.quantize not in QUANTIZE_MODES):
    raise ValueError(f"{c} does not tile x {x.dtype} {tuple(x.shape)} x codes "
                     f"{tuple(codes.shape)}: x must be floating point with K <= {kp}, block_n="
                     f"{c.block_n} must divide N={n} (N padded to 16 by ternary_matmul), "
                     f"block_n and block_w={c.block_w} be powers of two, block_w >= "
                     f"{WORDS_PER_TILE}, and quantize one of {QUANTIZE_MODES}.")
  words = jax.lax.bitcast_convert_type(codes.reshape(n, kp // WORD_WEIGHTS, 4), jnp.int32)
  kernel = functools.partial(_kernel, block_w=c.block_w,
                             asm=not interpret if asm is None else asm)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  args = [None, words, None, col_scale]
  in_specs = [whole, pl.BlockSpec((c.block_n, kp // WORD_WEIGHTS), lambda j: (j, 0)), whole,
              pl.BlockSpec((c.block_n,), lambda j: (j,))]
  if c.quantize == "xla":
    xq, amax = absmax_int8_with_absmax(x)
    args[0], args[2] = x_planes(xq, kp).reshape(4 * m, kp // WORD_WEIGHTS), amax[:, 0]
  else:
    args[0] = jnp.pad(x, ((0, 0), (0, kp - k))).reshape(m, kp // TILE_K, TILE_K // 4, 4)
    if c.quantize == "absmax_xla":
      args[2] = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=1)
    else:
      del args[2], in_specs[2]
      kernel = functools.partial(_without_absmax, kernel)
  return call(kernel, args, in_specs, whole, jax.ShapeDtypeStruct((m, n), out_dtype),
              grid=(n // c.block_n,), config=c, interpret=interpret, out_init=out_init)
