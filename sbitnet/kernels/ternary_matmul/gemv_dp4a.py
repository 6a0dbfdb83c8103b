"""Pallas (Triton backend) decode GEMV: a few int8 rows × packed 2-bit ternary weights on the CUDA
cores (`dp4a`), no tensor cores.

At one row a tensor-core dot wastes 15 of its 16 rows, and the 2-bit MMA kernel (`pallas_triton`)
measured latency-bound well below the read bandwidth; this kernel is 1.1-1.4x faster there (H200,
docs/kernels.md). Each extra row adds 4 dp4a per word: it still won at two rows, the MMA kernels
from four (`config.gemv_wins`).

Each program streams `block_n` rows of codes (format v2, read as 32-bit words: 16 weights each) in
steps of `block_w` words, with every x row held in registers beside them. A word of tile i at word
offset w (bytes 4w..4w+3) holds in plane q (bits 2q..2q+1 of each byte) the codes of K rows
`128 i + 32 q + 4 w .. + 3`: four consecutive rows, i.e. one 32-bit word of int8 x. So

  acc += dp4a(c_q, x_q)   over the planes q,   c_q = (word >> 2q) & 0x03030303,

where `x_q` is x's word of those K rows. `quantize_rows` writes x plane-major (`layout="planes"`),
so plane q of a step is one contiguous run of x's words, loaded once per program and step and
broadcast over its code rows, and the epilogue applies `x @ t = x @ c - sum(x)`
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
from sbitnet.kernels.ternary_matmul.quantize_rows import (MAX_WIDTH, divide_as_xla, inverse_rms,
                                                         load_row, norm_inputs, normalize,
                                                         quantization_scale, quantize, row_width,
                                                         split_norm_refs)
from sbitnet.ops.prologue import RMSNormPrologue, SwiGLUPrologue, check_swiglu

WORD_WEIGHTS = 16  # 2-bit codes per 32-bit word
PLANE_WORDS = PLANE_ROWS // 4  # code words per format tile = int8 x words per plane of a tile
_PLANE_MASK = 0x03030303


@dataclasses.dataclass(frozen=True)
class GemvConfig:
  """Code rows (output columns) per program, 32-bit code words per step, warps per program, and
  whether the kernel quantizes x itself."""
  block_n: int = 8
  block_w: int = 128
  num_warps: int = 4
  num_stages: int = 1
  # Float x in, quantized by every program itself (`matmul_quantizing`) instead of by
  # `quantize_rows` ahead.
  quantizes_x: bool = False


def x_plane_words(xq: jax.Array) -> jax.Array:
  """int8 `[M, Kp]` in `quantize_rows`' "planes" layout -> int32 `[M, 4, Kp / 16]`, the same bytes
  (a bitcast): entry `[r, q, 8 i + w]` is x row r's word of K rows `128 i + 32 q + 4 w .. + 3`
  (little-endian bytes), the word the codes' word `8 i + w` meets in plane q."""
  m, kp = xq.shape
  return jax.lax.bitcast_convert_type(xq.reshape(m, 4, kp // 16, 4), jnp.int32)


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


def _accumulate(w_ref, x_words_of, m: int, block_w: int, asm: bool) -> tuple[jax.Array, ...]:
  """Per row r < m, the int32 `[block_n, block_w]` dp4a partial sums of this program's code rows
  (w_ref `[block_n, words]`) with x, whose words of plane q at step s are `x_words_of(r, s)[q]`
  (`[1, block_w]`)."""
  bn, words = w_ref.shape

  def step(s, accs):
    # Code words past the end load as zeros (code 0 adds nothing to x @ c).
    ok = s * block_w + jax.lax.broadcasted_iota(jnp.int32, (1, block_w), 1) < words
    planes = _planes(pltriton.load(w_ref.at[:, pl.ds(s * block_w, block_w)], mask=ok, other=0),
                     asm)
    return tuple(_dp4a(planes, [jnp.broadcast_to(x, (bn, block_w)) for x in x_words_of(r, s)],
                       acc, asm) for r, acc in enumerate(accs))

  zeros = (jnp.zeros((bn, block_w), jnp.int32),) * m
  return jax.lax.fori_loop(0, pl.cdiv(words, block_w), step, zeros)


def _store(o_ref, accs, offsets, row_scales, col_scale) -> None:
  """Output columns `[j * block_n, (j + 1) * block_n)` of every row:
  `(sum(acc) - offset) * row_scale * col_scale` (x @ t = x @ c - sum(x))."""
  j, bn = pl.program_id(0), col_scale.shape[0]
  for r, (acc, offset, row_scale) in enumerate(zip(accs, offsets, row_scales)):
    dot = jnp.sum(acc, axis=1) - offset
    y = dot.astype(jnp.float32) * row_scale * col_scale
    pltriton.store(o_ref.at[pl.ds(r, 1), pl.ds(j * bn, bn)], y.astype(o_ref.dtype)[None, :])


def _kernel(x_ref, rs_ref, sum_ref, w_ref, cs_ref, o_ref, *, block_w: int, asm: bool):
  """x_ref: `x_plane_words` `[M, 4, Kp / 16]` of int8 x quantized ahead (`quantize_rows`)."""
  m, _, words = x_ref.shape

  def x_words_of(r, s):
    # One 1-D load per plane, broadcast over the code rows as it is (no reshape). Indices as
    # int32 arrays: Pallas does not take Python ints beside a slice here.
    ok = s * block_w + jax.lax.broadcasted_iota(jnp.int32, (block_w,), 0) < words
    return [pltriton.load(x_ref.at[jnp.int32(r), jnp.int32(q), pl.ds(s * block_w, block_w)],
                          mask=ok, other=0)[None, :] for q in range(4)]

  accs = _accumulate(w_ref, x_words_of, m, block_w, asm)
  rows = [pl.ds(r, 1) for r in range(m)]
  _store(o_ref, accs, [pltriton.load(sum_ref.at[r]) for r in rows],
         [pltriton.load(rs_ref.at[r]) for r in rows], cs_ref[...])


def _kernel_quantizing(*refs, block_w: int, asm: bool, norm_eps: float | None, residual: bool,
                       glu: bool):
  """Refs: float x `[M, Kin]`, the residual `[M, K]` (with `residual`), the norm's scale `[K]`
  (with `norm_eps`), codes, column scales, output. Each program quantizes every row itself, bit
  for bit as `quantize_rows` does: the row's statistics (the norm's sum of
  squares, absmax, the sum of q) from the whole row in registers, then, per step, the values its
  code words meet, read in their natural order, gated (`glu`: `swiglu`, Kin = 2K) or normalized,
  quantized, packed four to a word and sorted into the code planes."""
  x_ref, res_ref, norm_ref, (w_ref, cs_ref, o_ref) = split_norm_refs(refs, norm_eps, residual)
  m, k_in = x_ref.shape
  k = k_in // 2 if glu else k_in
  cols = jax.lax.broadcasted_iota(jnp.int32, (row_width(k),), 0)
  stats = []
  for r in range(m):
    raw = load_row(x_ref, res_ref, r, cols, cols < k, glu, k)
    inv_rms = None if norm_ref is None else inverse_rms(jnp.sum(raw * raw), k, norm_eps, asm)
    v = normalize(raw, norm_ref, cols, cols < k, inv_rms)
    s = quantization_scale(jnp.max(jnp.abs(v)), asm)
    stats.append((inv_rms, s, jnp.sum(quantize(v, s, asm))))
  # The step's values in their natural order, [tiles, plane q, word w, byte b] (coalesced loads):
  # word 8 i + w of plane q holds in byte b K row 128 i + 32 q + 4 w + b of the step.
  shape = (block_w // PLANE_WORDS, 4, PLANE_WORDS, 4)
  tile, plane, word, byte = (jax.lax.broadcasted_iota(jnp.int32, shape, d) for d in range(4))
  step_rows = TILE_K * tile + PLANE_ROWS * plane + 4 * word + byte
  word_plane = jax.lax.broadcasted_iota(jnp.int32, shape[:3], 1)

  def x_words_of(r, s):
    inv_rms, scale, _ = stats[r]
    at = s * block_w * WORD_WEIGHTS + step_rows
    v = normalize(load_row(x_ref, res_ref, r, at, at < k, glu, k), norm_ref, at, at < k, inv_rms)
    # Disjoint bytes: their sum is the packed word. Each plane is then picked out in registers.
    words = jnp.sum((quantize(v, scale, asm) & 0xFF) << (8 * byte), axis=3)
    return [jnp.sum(jnp.where(word_plane == q, words, 0), axis=1).reshape(1, block_w)
            for q in range(4)]

  accs = _accumulate(w_ref, x_words_of, m, block_w, asm)
  _store(o_ref, accs, [offset for *_, offset in stats],
         [divide_as_xla(jnp.ones_like(s), s, asm) for _, s, _ in stats], cs_ref[...])


def _check(config: GemvConfig, x: jax.Array, k: int, codes: jax.Array, int8: bool) -> None:
  """x `[M, Kin]` holds rows of K values (Kin = 2K: gate and up)."""
  (n, nbytes), c = codes.shape, config
  powers_of_two = all(b > 0 and not b & (b - 1) for b in (c.block_n, c.block_w))
  dtype_ok = x.dtype == jnp.int8 if int8 else jnp.issubdtype(x.dtype, jnp.floating)
  if (not dtype_ok or k > nbytes * 4 or n % c.block_n or not powers_of_two
      or c.block_w < PLANE_WORDS):
    raise ValueError(f"{c} does not tile x {x.dtype} {tuple(x.shape)} x codes "
                     f"{tuple(codes.shape)}: x must be {'int8' if int8 else 'float'} with K <= "
                     f"{nbytes * 4}, block_n={c.block_n} must divide N={n} (N padded to 16 by "
                     f"ternary_matmul), and block_n and block_w={c.block_w} be powers of two with "
                     f"block_w >= {PLANE_WORDS} (one format tile).")


def _call(kernel, x_inputs: list[jax.Array], m: int, codes: jax.Array, col_scale: jax.Array,
          config: GemvConfig, out_dtype, interpret: bool, out_init: jax.Array | None):
  """The GEMV's pallas_call: x's inputs whole, `block_n` code rows and column scales per program."""
  n, nbytes = codes.shape
  words = jax.lax.bitcast_convert_type(codes.reshape(n, nbytes // 4, 4), jnp.int32)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  in_specs = [whole] * len(x_inputs) + [
      pl.BlockSpec((config.block_n, nbytes // 4), lambda j: (j, 0)),
      pl.BlockSpec((config.block_n,), lambda j: (j,))]
  return call(kernel, [*x_inputs, words, col_scale], in_specs, whole,
              jax.ShapeDtypeStruct((m, n), out_dtype), grid=(n // config.block_n,),
              config=config, interpret=interpret, out_init=out_init)


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def matmul(xq: jax.Array, row_scale: jax.Array, row_sum: jax.Array, codes: jax.Array,
           col_scale: jax.Array, *, config: GemvConfig, out_dtype, interpret: bool = False,
           asm: bool | None = None, out_init: jax.Array | None = None) -> jax.Array:
  """`(xq @ t) * row_scale[:, None] * col_scale[None, :]` for a few rows.

  xq, row_scale, row_sum: `quantize_rows(x, rows=M, layout="planes")`: int8 `[M, Kp]`, float32
  `[M]` and int32 `[M]` (the sum of each row of xq); codes: uint8 `[N, Kp / 4]` (format v2), N a
  multiple of `block_n`; col_scale: float32 `[N]`. Returns `[M, N]` of `out_dtype`.
  asm: inline PTX (default: unless interpreting; interpret mode computes the same in jnp).
  `out_init`, if given, is the output buffer (aliased): tiles the kernel fails to write keep it.
  """
  _check(config, xq, xq.shape[1], codes, int8=True)
  if xq.shape[1] != codes.shape[1] * 4:
    raise ValueError(f"the dp4a GEMV takes x in quantize_rows' \"planes\" layout, [M, Kp] with "
                     f"Kp = {codes.shape[1] * 4} for codes {tuple(codes.shape)}; got x "
                     f"{tuple(xq.shape)}.")
  kernel = functools.partial(_kernel, block_w=config.block_w,
                             asm=not interpret if asm is None else asm)
  return _call(kernel, [x_plane_words(xq), row_scale, row_sum], xq.shape[0],
               codes, col_scale, config, out_dtype, interpret, out_init)


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def matmul_quantizing(x: jax.Array, codes: jax.Array, col_scale: jax.Array,
                      prologue: RMSNormPrologue | None = None, *, config: GemvConfig, out_dtype,
                      interpret: bool = False, asm: bool | None = None,
                      out_init: jax.Array | None = None) -> jax.Array:
  """`matmul` of `quantize_rows(x, prologue, rows=M, layout="planes")` in one kernel: each
  program quantizes x (after the `prologue`, an RMS norm or SwiGLU, if given) itself, bit for bit
  as `quantize_rows`, so a decode call is one launch instead of two (three with XLA's SwiGLU
  ahead). Every program reads the whole of x (and the residual and norm scale): worth it where K
  is short (`config.choose_gemv`; with SwiGLU on the 3B down projection, K = 11008, it measured
  slower than XLA's gating and `quantize_rows` ahead, docs/kernels.md).

  x: float `[M, Kin]`, Kin = K, or 2K with a `SwiGLUPrologue` (K <= row_width's MAX_WIDTH);
  codes, col_scale, the rest: as `matmul`."""
  glu = isinstance(prologue, SwiGLUPrologue)
  if prologue is not None and not isinstance(prologue, (RMSNormPrologue, SwiGLUPrologue)):
    raise ValueError(f"the quantizing dp4a GEMV computes an RMSNormPrologue, a SwiGLUPrologue or "
                     f"none, got {type(prologue).__name__}; apply it first or use a GemvConfig "
                     "with quantizes_x=False.")
  if glu:
    check_swiglu(x.shape)
  k = x.shape[1] // 2 if glu else x.shape[1]
  _check(config, x, k, codes, int8=False)
  if k > MAX_WIDTH:
    raise ValueError(f"the quantizing dp4a GEMV holds a row of x in registers: K={k} must be <= "
                     f"{MAX_WIDTH}; use a GemvConfig with quantizes_x=False.")
  inputs, norm_eps, residual = norm_inputs(x, prologue)
  kernel = functools.partial(_kernel_quantizing, block_w=config.block_w,
                             asm=not interpret if asm is None else asm, norm_eps=norm_eps,
                             residual=residual, glu=glu)
  return _call(kernel, inputs, x.shape[0], codes, col_scale, config, out_dtype, interpret,
               out_init)
