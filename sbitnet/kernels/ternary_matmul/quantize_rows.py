"""Pallas (Triton backend): one pass that prepares int8 activations for the 2-bit kernels.

Per row r of x `[M, K]` (float; or of `prologue(x)`, an RMS norm or SwiGLU computed in the same
pass in float32, `sbitnet.ops.prologue`), bit for bit as `absmax_int8` computes them (XLA):

  amax = max_k |x[r, k]|,   s = 127 / max(amax, EPS),   q = clip(round(x[r] · s), -128, 127)
  scale[r] = 1 / s,   offset[r] = a sum of q (below)

written in one of three layouts (`layout`):
- "natural" (the Triton MMA kernel, the int8 GEMMs): q as `[M, K]`, offset = the sum of q over all
  of K;
- "planes" (the dp4a GEMV): K zero-padded to Kp, a multiple of TILE_K, and the row plane-major:
  column `q · Kp / 4 + 32 t + j` holds K row `128 t + 32 q + j` (plane q of format tile t), so
  that plane q of any run of code words meets one contiguous run of x's words; offset = the sum of
  q over all of K;
- "step_planes" (the Mosaic GPU kernel): K zero-padded to a multiple of STEP_K and, within each
  step of STEP_K rows, column `128q + 32t + j` holding K row `128t + 32q + j` (plane q of format
  tile t = 0..3), so that plane q of a step's `[n, 128]` code bytes multiplies one contiguous
  `[M, 128]` block of x; offset = the sum of q over planes 0-2, which multiply c = t + 1 instead
  of t there.

In XLA that is two or three kernels per call (the absmax reduction, the quantization with any
reordering, the offset reduction), each a launch of a few microseconds at decode sizes; here it is
one. Each program holds one whole row in registers (up to MAX_WIDTH columns; longer rows take a
second pass): "step_planes" loads it already in its output order (a gather of 32-element runs),
the others in natural order, "planes" scattering the int8 values on the store. Rows past M
(up to `rows`) come out zero, with scale 0.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K
from sbitnet.ops.prologue import (Prologue, RMSNormPrologue, SwiGLUPrologue, check_rms_norm,
                                  check_swiglu)
from sbitnet.ops.quantizers import EPS

# K rows per step of the Mosaic 2-bit kernel: four format tiles, so that a step's code bytes are
# 128 wide (one 128-byte swizzle row) and each plane of them is a whole [rows, 128] wgmma operand.
STEP_K = 4 * TILE_K
STEP_BYTES = STEP_K // 4
MAX_WIDTH = 32768  # row columns in registers at once: 64 float32 per thread at 16 warps
Layout = Literal["natural", "planes", "step_planes"]
LAYOUTS = get_args(Layout)


def divide_as_xla(a: jax.Array, b: jax.Array, asm: bool) -> jax.Array:
  """`a / b` in float32 as XLA divides on the same backend, so that the kernels' int8 values and
  scales stay bit-identical to the XLA path's: on NVIDIA GPUs XLA lowers float32 division to
  `div.full.f32` (LLVM's `-nvptx-prec-divf32=1`: within 2 ulp, not IEEE; on an H200 28 % of
  `127 / v` quotients differed from IEEE), so the kernel issues the same instruction; interpret
  mode divides as XLA on the CPU does (IEEE)."""
  if not asm:
    return a / b
  [r] = pltriton.elementwise_inline_asm(
      "div.full.f32 $0, $1, $2;", args=[a, b], constraints="=r,r,r", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(b.shape, jnp.float32)])
  return r


def round_to_int(v: jax.Array, asm: bool) -> jax.Array:
  """`jnp.round` (to nearest, ties to even) of float32 as int32; on the GPU one `cvt.rni`, which
  also keeps the multiply before it from being fused into an FMA (that would round the exact
  product instead of the float32 one XLA rounds)."""
  if not asm:
    return jnp.round(v).astype(jnp.int32)
  [r] = pltriton.elementwise_inline_asm(
      "cvt.rni.s32.f32 $0, $1;", args=[v], constraints="=r,r", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.int32)])
  return r


def row_width(k: int, max_width: int = MAX_WIDTH) -> int:
  """Columns a program holds in registers at once for rows of k values (a power of two)."""
  return min(max(1 << (k - 1).bit_length(), 1024), max_width)


def load_row(x_ref, res_ref, row, cols: jax.Array, ok: jax.Array, glu: bool, k: int) -> jax.Array:
  """Float32 values at columns `cols` (where `ok`, else 0) of row `row` of the linear's input
  before any norm: `x`, `swiglu(x)` with `glu` (x `[M, 2k]`), plus the residual if `res_ref`."""
  v = pltriton.load(x_ref.at[row, cols], mask=ok, other=0).astype(jnp.float32)
  if glu:
    v = jax.nn.silu(v) * pltriton.load(x_ref.at[row, cols + k], mask=ok,
                                       other=0).astype(jnp.float32)
  if res_ref is not None:
    v = v + pltriton.load(res_ref.at[row, cols], mask=ok, other=0).astype(jnp.float32)
  return v


def normalize(v: jax.Array, norm_ref, cols: jax.Array, ok: jax.Array,
              inv_rms: jax.Array | None) -> jax.Array:
  """`v * inv_rms * scale[cols]` (`rms_norm`'s last step), or v without a norm."""
  if norm_ref is None:
    return v
  return v * inv_rms * pltriton.load(norm_ref.at[cols], mask=ok, other=0).astype(jnp.float32)


def inverse_rms(sum_squares: jax.Array, k: int, eps: float, asm: bool) -> jax.Array:
  """`rsqrt(sum_squares / k + eps)`, float32 `[1]`, dividing as XLA does."""
  mean = divide_as_xla(sum_squares[None], jnp.full((1,), k, jnp.float32), asm)
  return jax.lax.rsqrt(mean + eps)


def quantization_scale(amax: jax.Array, asm: bool) -> jax.Array:
  """`absmax_int8`'s multiplier `127 / max(amax, EPS)`, float32 `[1]`."""
  s = divide_as_xla(jnp.full((1,), 127.0, jnp.float32), jnp.maximum(amax, EPS)[None], asm)
  if not asm:  # keep XLA from rewriting 1 / (127 / a) as a · (1 / 127), which rounds otherwise
    s = jax.lax.optimization_barrier(s)
  return s


def quantize(v: jax.Array, s: jax.Array, asm: bool) -> jax.Array:
  """int32 `clip(round(v · s), -128, 127)`."""
  return jnp.clip(round_to_int(v * s, asm), -128, 127)


def norm_inputs(x: jax.Array, prologue: Prologue | None
                ) -> tuple[list[jax.Array], float | None, bool]:
  """A kernel's inputs for x and an RMS-norm prologue (checked): `[x, residual (if any), scale]`,
  the norm's eps (None without a norm) and whether a residual comes; `[x], None, False` for any
  other prologue."""
  if not isinstance(prologue, RMSNormPrologue):
    return [x], None, False
  check_rms_norm(x.shape, prologue.scale, prologue.residual)
  residual = prologue.residual is not None
  return ([x, *([prologue.residual] if residual else []), prologue.scale], float(prologue.eps),
          residual)


def split_norm_refs(refs, norm_eps: float | None, residual: bool):
  """(x ref, residual ref or None, norm-scale ref or None, the remaining refs) of a kernel's refs
  laid out as `norm_inputs` gave them, then the rest."""
  x_ref, *refs = refs
  res_ref = refs.pop(0) if residual else None
  norm_ref = refs.pop(0) if norm_eps is not None else None
  return x_ref, res_ref, norm_ref, refs


def laid_out_width(k: int, layout: Layout) -> int:
  """Columns of a row of K values in `layout` (K zero-padded as the layout wants)."""
  multiple = {"natural": 1, "planes": TILE_K, "step_planes": STEP_K}[layout]
  return -(-k // multiple) * multiple


def _source_columns(p: jax.Array, layout: Layout) -> jax.Array:
  """int32: the K row whose value a program holds at chunk position p (int32). "planes" holds
  them in natural order and moves them on the store (`_planes_column`): loads stay contiguous."""
  if layout != "step_planes":
    return p
  within = p % STEP_K
  plane, tile = within // STEP_BYTES, within % STEP_BYTES // PLANE_ROWS
  return p - within + tile * STEP_BYTES + plane * PLANE_ROWS + p % PLANE_ROWS


def _planes_column(k_row: jax.Array, out_k: int) -> jax.Array:
  """int32: the output column of K row `k_row` in the "planes" layout of a row of out_k columns."""
  tile, plane, j = k_row // TILE_K, k_row % TILE_K // PLANE_ROWS, k_row % PLANE_ROWS
  return plane * (out_k // 4) + tile * PLANE_ROWS + j


def _kernel(*refs, width: int, layout: Layout, asm: bool, norm_eps: float | None,
            residual: bool, glu: bool):
  """Refs: x `[M, Kin]`, the residual `[M, K]` (with `residual`), the norm's scale `[K]` (with
  `norm_eps`), then the outputs. Row values v (the linear's input), float32 as
  `sbitnet.ops.prologue` computes them: `x`; with `glu` `swiglu(x)` (Kin = 2K); with `norm_eps`
  `rms_norm(x, scale, eps, residual)`."""
  x_ref, res_ref, norm_ref, (q_ref, scale_ref, offset_ref) = split_norm_refs(refs, norm_eps,
                                                                             residual)
  row = pl.program_id(0)
  (m, k_in), out_k = x_ref.shape, q_ref.shape[1]
  k = k_in // 2 if glu else k_in
  chunks = -(-out_k // width)
  real = row < m
  place = jax.lax.broadcasted_iota(jnp.int32, (width,), 0)

  def summed(at):
    """Which columns of the chunk that starts at output column `at` count in the offset."""
    return (place + at) % STEP_K < 3 * STEP_BYTES if layout == "step_planes" else True

  def load(c):
    """Chunk c of the row as the program holds it (`_source_columns`) before any norm, float32,
    and its columns."""
    cols = _source_columns(place + c * width, layout)
    ok = (cols < k) & real
    return load_row(x_ref, res_ref, jnp.minimum(row, m - 1), cols, ok, glu, k), cols, ok

  def norm_factor(sum_squares):
    return None if norm_ref is None else inverse_rms(sum_squares, k, norm_eps, asm)

  def value(c, inv_rms):
    raw, cols, ok = load(c)
    return normalize(raw, norm_ref, cols, ok, inv_rms)

  def store(c, v, total):
    q = quantize(v, s, asm)
    at = c * width
    if layout == "planes":
      to = place + at
      # Positions past the row keep distinct columns (masked there, but not aliasing real ones).
      columns = jnp.where(to < out_k, _planes_column(to, out_k), to)
      pltriton.store(q_ref.at[row, columns], q.astype(jnp.int8), mask=to < out_k)
    else:
      pltriton.store(q_ref.at[row, pl.ds(at, width)], q.astype(jnp.int8),
                     mask=place + at < out_k)
    return total + jnp.sum(jnp.where(summed(at), q, 0))

  if chunks == 1:  # the whole row stays in registers: x is read once
    raw, cols, ok = load(0)
    inv_rms = norm_factor(jnp.sum(raw * raw))
    v = normalize(raw, norm_ref, cols, ok, inv_rms)
    amax = jnp.max(jnp.abs(v))
  else:
    inv_rms = None
    if norm_ref is not None:
      inv_rms = norm_factor(jax.lax.fori_loop(
          0, chunks, lambda c, t: t + jnp.sum(jnp.square(load(c)[0])), jnp.float32(0)))
    amax = jax.lax.fori_loop(
        0, chunks, lambda c, a: jnp.maximum(a, jnp.max(jnp.abs(value(c, inv_rms)))),
        jnp.float32(0))
  s = quantization_scale(amax, asm)
  if chunks == 1:
    offset = store(0, v, jnp.int32(0))
  else:
    offset = jax.lax.fori_loop(0, chunks, lambda c, t: store(c, value(c, inv_rms), t),
                               jnp.int32(0))
  scale = jnp.where(real, divide_as_xla(jnp.ones_like(s), s, asm), 0.0)
  pltriton.store(scale_ref.at[pl.ds(row, 1)], scale)
  pltriton.store(offset_ref.at[pl.ds(row, 1)], offset[None])


@functools.partial(jax.jit, static_argnames=("rows", "layout", "interpret", "asm",
                                             "max_width"))
def quantize_rows(x: jax.Array, prologue: Prologue | None = None, *, rows: int, layout: Layout,
                  interpret: bool = False, asm: bool | None = None,
                  max_width: int = MAX_WIDTH) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x float `[M, Kin]` -> (q int8 `[rows, laid_out_width(K, layout)]`; scale float32 `[rows]`;
  offset int32 `[rows]`), rows >= M, in the `layout` of the module docstring: `q` and `scale` of
  `absmax_int8(v)` (zero past M) and the offset of the layout (module docstring), where v is x
  (K = Kin) or `prologue(x, jnp.float32)` (`sbitnet.ops.prologue`: an RMS norm with or without a
  residual, K = Kin, or SwiGLU, K = Kin / 2) computed in the same pass. A row of up to
  `max_width` columns (a power of two, >= 1024) is loaded once; longer rows are read twice, in
  chunks of that width (three times with a norm).
  asm: inline PTX (default: unless interpreting; interpret mode computes the same in jnp)."""
  m, k_in = x.shape
  glu = isinstance(prologue, SwiGLUPrologue)
  k = k_in // 2 if glu else k_in
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: quantize_rows writes one of {LAYOUTS}.")
  out_k = laid_out_width(k, layout)
  if not jnp.issubdtype(x.dtype, jnp.floating) or rows < m or k == 0:
    raise ValueError(f"quantize_rows takes float x [M, K] with K >= 1 and rows >= M, got "
                     f"{x.dtype} {tuple(x.shape)} and rows={rows}.")
  if glu:
    check_swiglu(x.shape)
  if max_width < 1024 or max_width & (max_width - 1):
    raise ValueError(f"max_width={max_width} must be a power of two >= 1024.")
  inputs, norm_eps, residual = norm_inputs(x, prologue)
  width = row_width(out_k, max_width)
  kernel = functools.partial(_kernel, width=width, layout=layout,
                             asm=not interpret if asm is None else asm, norm_eps=norm_eps,
                             residual=residual, glu=glu)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  return pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((rows, out_k), jnp.int8),
                 jax.ShapeDtypeStruct((rows,), jnp.float32),
                 jax.ShapeDtypeStruct((rows,), jnp.int32)),
      grid=(rows,),
      in_specs=[whole] * len(inputs),
      out_specs=(whole, whole, whole),
      compiler_params=pltriton.CompilerParams(num_warps=min(16, max(4, width // 1024)),
                                              num_stages=1),
      interpret=interpret,
  )(*inputs)
