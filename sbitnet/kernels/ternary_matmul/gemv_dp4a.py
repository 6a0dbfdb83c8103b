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


def _accumulate(w_refs: list, x_words_of, m: int, block_w: int, asm: bool,
                x_sums: bool = False) -> tuple[list[list[jax.Array]], list[jax.Array]]:
  """Per code block i (`w_refs[i]`: `[block_n, words]`, this program's code rows of one weight)
  and row r < m, the int32 `[block_n, block_w]` dp4a partial sums `accs[i][r]` of the block with
  x, whose words of plane q at step s are `x_words_of(r, s)[q]` (`[1, block_w]`); with `x_sums`
  also each row's `[1, block_w]` partial sums of x's bytes (else an empty list)."""
  bn, words = w_refs[0].shape
  ones = [jnp.full((1, block_w), 0x01010101, jnp.int32)] * 4

  def step(s, carry):
    accs, sums = carry
    # Code words past the end load as zeros (code 0 adds nothing to x @ c).
    ok = s * block_w + jax.lax.broadcasted_iota(jnp.int32, (1, block_w), 1) < words
    planes = [_planes(pltriton.load(w.at[:, pl.ds(s * block_w, block_w)], mask=ok, other=0), asm)
              for w in w_refs]
    xs = [x_words_of(r, s) for r in range(m)]
    accs = [[_dp4a(p, [jnp.broadcast_to(x, (bn, block_w)) for x in xr], acc, asm)
             for xr, acc in zip(xs, block_accs)] for p, block_accs in zip(planes, accs)]
    return accs, [_dp4a(ones, xr, total, asm) for xr, total in zip(xs, sums)]

  zeros = [[jnp.zeros((bn, block_w), jnp.int32)] * m for _ in w_refs]
  sums = [jnp.zeros((1, block_w), jnp.int32)] * (m if x_sums else 0)
  return jax.lax.fori_loop(0, pl.cdiv(words, block_w), step, (zeros, sums))


def _scaled(acc: jax.Array, offset, row_scale, col_scale: jax.Array) -> jax.Array:
  """float32 `[block_n]`: `(sum(acc) - offset) * row_scale * col_scale` (x @ t = x @ c - sum(x))."""
  return (jnp.sum(acc, axis=1) - offset).astype(jnp.float32) * row_scale * col_scale


def _store(o_ref, accs, offsets, row_scales, col_scale) -> None:
  """Output columns `[j * block_n, (j + 1) * block_n)` of every row, `_scaled`."""
  j, bn = pl.program_id(0), col_scale.shape[0]
  for r, (acc, offset, row_scale) in enumerate(zip(accs, offsets, row_scales)):
    y = _scaled(acc, offset, row_scale, col_scale)
    pltriton.store(o_ref.at[pl.ds(r, 1), pl.ds(j * bn, bn)], y.astype(o_ref.dtype)[None, :])


def _words_ahead(x_ref, block_w: int):
  """`x_words_of(r, s)` for `x_words` `[M, tiles, 32]` of x quantized ahead: plane q of each tile
  is x's words 8q .. 8q + 7 of that tile, a strided view (no copy)."""
  tiles = x_ref.shape[1]
  tiles_per_step = block_w // PLANE_WORDS

  def x_words_of(r, s):
    tile = s * tiles_per_step
    tile_ok = tile + jax.lax.broadcasted_iota(
        jnp.int32, (1, tiles_per_step, PLANE_WORDS), 1) < tiles
    return [pltriton.load(x_ref.at[pl.ds(r, 1), pl.ds(tile, tiles_per_step),
                                   pl.ds(q * PLANE_WORDS, PLANE_WORDS)],
                          mask=tile_ok, other=0).reshape(1, block_w) for q in range(4)]
  return x_words_of


def _quantized_words(value_at, s, block_w: int, scale: jax.Array, asm: bool) -> list[jax.Array]:
  """x's words of planes 0..3 at step s (`[1, block_w]` each), from float32 values
  `value_at(rows)` of K rows `rows` (zero past K) quantized with `scale` (`quantize`) and packed
  four to a word: word p holds, in byte b of plane q, K row
  `s * block_w * 16 + 128 (p // 8) + 32 q + 4 (p % 8) + b`. The step's values are read in their
  natural order, `[tiles, q, p % 8, b]` (coalesced), and each plane picked out in registers."""
  tiles = block_w // PLANE_WORDS
  shape = (tiles, 4, PLANE_WORDS, 4)
  index = [jax.lax.broadcasted_iota(jnp.int32, shape, d) for d in range(4)]
  rows = (s * block_w * WORD_WEIGHTS + TILE_K * index[0] + PLANE_ROWS * index[1] + 4 * index[2]
          + index[3])
  byte = (quantize(value_at(rows), scale, asm) & 0xFF) << (8 * index[3])
  words = jnp.sum(byte, axis=3)  # disjoint bytes: the sum is their OR
  plane = jax.lax.broadcasted_iota(jnp.int32, shape[:3], 1)
  return [jnp.sum(jnp.where(plane == q, words, 0), axis=1).reshape(1, block_w) for q in range(4)]


def _kernel(x_ref, rs_ref, sum_ref, w_ref, cs_ref, o_ref, *, block_w: int, asm: bool):
  """x_ref: `x_words` `[M, tiles, 32]` of int8 x quantized ahead (`quantize_rows`)."""
  m = x_ref.shape[0]
  [accs], _ = _accumulate([w_ref], _words_ahead(x_ref, block_w), m, block_w, asm)
  rows = [pl.ds(r, 1) for r in range(m)]
  _store(o_ref, accs, [pltriton.load(sum_ref.at[r]) for r in rows],
         [pltriton.load(rs_ref.at[r]) for r in rows], cs_ref[...])


def _kernel_gated(x_ref, rs_ref, sum_ref, gate_ref, up_ref, gate_cs_ref, up_cs_ref, h_ref,
                  amax_ref, *, block_w: int, asm: bool, dtype):
  """x as `_kernel`; this program's code rows of the gate and of the up projection. Writes
  `h = silu(g) * u` (float32, g and u rounded to `dtype` first, as the unfused path returns them)
  for its columns, and their absmax `[M, 1]` at column j of amax_ref."""
  m, j = x_ref.shape[0], pl.program_id(0)
  (gate_accs, up_accs), _ = _accumulate([gate_ref, up_ref], _words_ahead(x_ref, block_w), m,
                                        block_w, asm)
  gate_cs, up_cs = gate_cs_ref[...], up_cs_ref[...]
  bn = gate_cs.shape[0]
  for r in range(m):
    row = pl.ds(r, 1)
    offset, row_scale = pltriton.load(sum_ref.at[row]), pltriton.load(rs_ref.at[row])
    g, u = (_scaled(acc, offset, row_scale, cs).astype(dtype).astype(jnp.float32)
            for acc, cs in ((gate_accs[r], gate_cs), (up_accs[r], up_cs)))
    h = jax.nn.silu(g) * u
    pltriton.store(h_ref.at[pl.ds(r, 1), pl.ds(j * bn, bn)], h[None, :])
    pltriton.store(amax_ref.at[pl.ds(r, 1), pl.ds(j, 1)], jnp.max(jnp.abs(h)).reshape(1, 1))


def _kernel_from_parts(h_ref, parts_ref, w_ref, cs_ref, o_ref, *, block_w: int, asm: bool):
  """h `[M, K]` float32 and its absmax parts `[M, P]` (`_kernel_gated`): each program takes the
  scale from the max of the parts and quantizes the values its code words meet, summing them in
  the same loop (the offset)."""
  (m, k), n_parts = h_ref.shape, parts_ref.shape[1]
  at = jax.lax.broadcasted_iota(jnp.int32, (1 << (n_parts - 1).bit_length(),), 0)
  scales = [quantization_scale(jnp.max(pltriton.load(parts_ref.at[r, at], mask=at < n_parts,
                                                     other=0)), asm) for r in range(m)]

  def x_words_of(r, s):
    return _quantized_words(
        lambda rows: pltriton.load(h_ref.at[r, rows], mask=rows < k, other=0), s, block_w,
        scales[r], asm)

  [accs], sums = _accumulate([w_ref], x_words_of, m, block_w, asm, x_sums=True)
  _store(o_ref, accs, [jnp.sum(total) for total in sums],
         [divide_as_xla(jnp.ones_like(s), s, asm) for s in scales], cs_ref[...])


def _kernel_quantizing(*refs, block_w: int, asm: bool, norm_eps: float | None, residual: bool,
                       glu: bool):
  """Refs: float x `[M, Kin]`, the residual `[M, K]` (with `residual`), the norm's scale `[K]`
  (with `norm_eps`), codes, column scales, output. Each program quantizes every row itself, bit
  for bit as `quantize_rows` (natural order) does: the row's statistics (the norm's sum of
  squares, absmax, the sum of q) from the whole row in registers, then, per step, the values its
  code words meet, gathered in plane order, gated (`glu`: `swiglu`, Kin = 2K) or normalized,
  quantized and packed four to a word."""
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
  def x_words_of(r, s):
    inv_rms, scale, _ = stats[r]
    return _quantized_words(
        lambda at: normalize(load_row(x_ref, res_ref, r, at, at < k, glu, k), norm_ref, at,
                             at < k, inv_rms), s, block_w, scale, asm)

  [accs], _ = _accumulate([w_ref], x_words_of, m, block_w, asm)
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

  xq, row_scale, row_sum: `quantize_rows(x, rows=M, plane_order=False)`: int8 `[M, K]`, float32
  `[M]` and int32 `[M]` (the sum of each row of xq); codes: uint8 `[N, Kp / 4]` (format v2), N a
  multiple of `block_n`; col_scale: float32 `[N]`. Returns `[M, N]` of `out_dtype`.
  asm: inline PTX (default: unless interpreting; interpret mode computes the same in jnp).
  `out_init`, if given, is the output buffer (aliased): tiles the kernel fails to write keep it.
  """
  _check(config, xq, xq.shape[1], codes, int8=True)
  kernel = functools.partial(_kernel, block_w=config.block_w,
                             asm=not interpret if asm is None else asm)
  return _call(kernel, [x_words(xq, codes.shape[1] * 4), row_scale, row_sum], xq.shape[0],
               codes, col_scale, config, out_dtype, interpret, out_init)


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def matmul_quantizing(x: jax.Array, codes: jax.Array, col_scale: jax.Array,
                      prologue: RMSNormPrologue | None = None, *, config: GemvConfig, out_dtype,
                      interpret: bool = False, asm: bool | None = None,
                      out_init: jax.Array | None = None) -> jax.Array:
  """`matmul` of `quantize_rows(x, prologue, rows=M, plane_order=False)` in one kernel: each
  program quantizes x (after the `prologue`, an RMS norm or SwiGLU, if given) itself, bit for bit
  as `quantize_rows`, so a decode call is one launch instead of two (three with XLA's SwiGLU
  ahead). Every program reads the whole of x (and the residual and norm scale): worth it where K
  is short or the prologue would be a kernel of its own (`config.choose_gemv`).

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


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def gated(xq: jax.Array, row_scale: jax.Array, row_sum: jax.Array, codes: jax.Array,
          col_scale: jax.Array, *, config: GemvConfig, out_dtype, interpret: bool = False,
          asm: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """The gate/up projection of a SwiGLU block with the gating in the epilogue.

  xq, row_scale, row_sum: as `matmul`; codes: uint8 `[2F, Kp / 4]`, the gate's F code rows then
  the up projection's; col_scale: float32 `[2F]`; F a multiple of `config.block_n`. With
  `y = matmul(...)` rounded to `out_dtype` (what the unfused path hands on), returns
  `h = swiglu(y)` float32 `[M, F]` and `amax` float32 `[M, F / block_n]`: the absmax of each
  program's block_n columns of h, so `max(amax[r]) = max |h[r]|` (`matmul_from_parts`)."""
  _check(config, xq, xq.shape[1], codes, int8=True)
  m, (n, nbytes) = xq.shape[0], codes.shape
  f = n // 2
  if n % 2 or f % config.block_n:
    raise ValueError(f"the gated GEMV takes gate and up code rows [2F, ...] with F a multiple of "
                     f"block_n={config.block_n}, got {n} rows.")
  blocks = f // config.block_n
  words = jax.lax.bitcast_convert_type(codes.reshape(n, nbytes // 4, 4), jnp.int32)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  rows = pl.BlockSpec((config.block_n, nbytes // 4), lambda j: (j, 0))
  up_rows = pl.BlockSpec((config.block_n, nbytes // 4), lambda j: (j + blocks, 0))
  scales = pl.BlockSpec((config.block_n,), lambda j: (j,))
  up_scales = pl.BlockSpec((config.block_n,), lambda j: (j + blocks,))
  kernel = functools.partial(_kernel_gated, block_w=config.block_w,
                             asm=not interpret if asm is None else asm, dtype=out_dtype)
  return call(kernel, [x_words(xq, nbytes * 4), row_scale, row_sum, words, words, col_scale,
                       col_scale], [whole] * 3 + [rows, up_rows, scales, up_scales],
              [whole, whole], [jax.ShapeDtypeStruct((m, f), jnp.float32),
                               jax.ShapeDtypeStruct((m, blocks), jnp.float32)],
              grid=(blocks,), config=config, interpret=interpret, out_init=None)


@functools.partial(jax.jit, static_argnames=("config", "out_dtype", "interpret", "asm"))
def matmul_from_parts(h: jax.Array, amax: jax.Array, codes: jax.Array, col_scale: jax.Array, *,
                      config: GemvConfig, out_dtype, interpret: bool = False,
                      asm: bool | None = None, out_init: jax.Array | None = None) -> jax.Array:
  """`matmul` of `quantize_rows(h, rows=M, plane_order=False)` in one kernel, given the absmax of
  each row of h in parts (`gated`'s second output, `[M, P]`: the row's absmax is their max).
  Each program quantizes the values of h its code words meet and sums them as it goes, so no
  program reads a row more than once (`matmul_quantizing` reads it twice to find the absmax).

  h: float32 `[M, K]`; codes, col_scale, the rest: as `matmul`."""
  _check(config, h, h.shape[1], codes, int8=False)
  if amax.shape[0] != h.shape[0]:
    raise ValueError(f"amax must hold [M, parts] = [{h.shape[0]}, ...] absmax parts of h's rows, "
                     f"got {tuple(amax.shape)}.")
  kernel = functools.partial(_kernel_from_parts, block_w=config.block_w,
                             asm=not interpret if asm is None else asm)
  return _call(kernel, [h, amax], h.shape[0], codes, col_scale, config, out_dtype, interpret,
               out_init)
