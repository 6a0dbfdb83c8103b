import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.kernels.ternary_matmul.quantize_rows import quantize_rows
from sbitnet.ops import RMSNormPrologue, SwiGLUPrologue, absmax_int8
from tests.kernels.base import activations


def _laid_out(xq: np.ndarray, rows: int, layout: str) -> np.ndarray:
  """NumPy oracle of the layouts, rows zero-padded to `rows`: "natural"; "planes" (K padded to
  128; column q · Kp/4 + 32t + j <- K row 128t + 32q + j); "step_planes" (within each 512-column
  step, column 128q + 32t + j <- K row 128t + 32q + j)."""
  m, k = xq.shape
  multiple = {"natural": 1, "planes": 128, "step_planes": 512}[layout]
  kp = -(-k // multiple) * multiple
  x = np.pad(xq, ((0, rows - m), (0, kp - k)))
  if layout == "planes":
    return x.reshape(rows, kp // 128, 4, 32).transpose(0, 2, 1, 3).reshape(rows, kp)
  if layout == "step_planes":
    return x.reshape(rows, kp // 512, 4, 4, 32).transpose(0, 1, 3, 2, 4).reshape(rows, kp)
  return x


def _assert_layout(q, scale, offset, xq, x_scale, layout: str, exact: bool = True) -> None:
  """`quantize_rows`'s outputs (rows >= M) against `absmax_int8`'s: q in its layout, zero-padded;
  the scale, zero past M; the offset, the sum of q over planes 0-2 ("step_planes") or over all of
  K. Not `exact` (a row reduction the kernel sums in another order than XLA's `jnp.mean`): the
  scale within float32 rounding (1e-6) and at most one in 1,000 int8 values one step off (a value
  at a rounding tie)."""
  rows = q.shape[0]
  expected = _laid_out(np.asarray(xq), rows, layout)
  assert q.dtype == jnp.int8 and q.shape == expected.shape
  want_scale = np.pad(np.asarray(x_scale[:, 0]), (0, rows - xq.shape[0]))
  if exact:
    np.testing.assert_array_equal(np.asarray(q), expected)
    np.testing.assert_array_equal(np.asarray(scale), want_scale)
  else:
    off = np.abs(np.asarray(q, np.int32) - expected.astype(np.int32))
    assert off.max() <= 1 and np.count_nonzero(off) <= off.size // 1000
    np.testing.assert_allclose(np.asarray(scale), want_scale, rtol=1e-6)
  wide = np.asarray(q).astype(np.int64)
  summed = (wide.reshape(rows, -1, 4, 128)[:, :, :3].sum((1, 2, 3)) if layout == "step_planes"
            else wide.sum(1))
  np.testing.assert_array_equal(np.asarray(offset), summed)


@pytest.mark.parametrize("layout", ["natural", "planes", "step_planes"])
@pytest.mark.parametrize("m,k,rows,dtype,max_width", [
    (5, 1000, 16, jnp.bfloat16, 32768), (16, 2048, 16, jnp.bfloat16, 32768),
    (3, 700, 3, jnp.float32, 32768), (2, 4864, 16, jnp.float16, 32768),
    (3, 2600, 3, jnp.bfloat16, 1024)], ids=str)
def test_quantize_rows_is_absmax_int8_in_its_layout(m, k, rows, dtype, max_width, layout):
  """Interpret mode, exact: the quantized values in each layout (zero-padded), the scale (0 past
  M) and the offset (the sum over planes 0-2, or over all of K), against `absmax_int8` and a
  NumPy reordering; the last case reads its rows in three chunks. Row 0 has absmax 127 (s = 1)
  and values at .5, so rounding ties to even is checked too."""
  x = activations(jax.random.key(m * k), (m, k), dtype)
  ties = jnp.array([127.0, 2.5, -0.5, 3.5, -126.5], dtype)
  x = x.at[0, :5].set(ties).at[0, 5:].set(jnp.clip(x[0, 5:], -100, 100))
  q, scale, offset = quantize_rows(x, rows=rows, layout=layout, interpret=True,
                                   max_width=max_width)
  xq, x_scale = absmax_int8(x)
  np.testing.assert_array_equal(np.asarray(xq[0, :5]), [127, 2, 0, 4, -126])
  _assert_layout(q, scale, offset, xq, x_scale, layout)


@pytest.mark.parametrize("k", [28672, 40000])
def test_quantize_rows_lowers_for_the_gpu_and_checks_its_inputs(k):
  """The inline-PTX variant (division and rounding; interpret mode runs jnp) lowered to Triton IR
  on the CPU: a row of the widest width read once, and a longer one read in two passes."""
  quantize = functools.partial(quantize_rows, rows=48, layout="step_planes", asm=True)
  text = jax.jit(quantize).trace(jax.ShapeDtypeStruct((37, k), jnp.bfloat16)).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and "cvt.rni.s32.f32" in text and "div.full.f32" in text
  with pytest.raises(ValueError, match="rows >= M, got bfloat16 \\(4, 64\\) and rows=3"):
    quantize_rows(jnp.zeros((4, 64), jnp.bfloat16), rows=3, layout="step_planes")
  with pytest.raises(ValueError, match="int8 \\(4, 64\\)"):
    quantize_rows(jnp.zeros((4, 64), jnp.int8), rows=4, layout="natural")
  with pytest.raises(ValueError, match="max_width=1000 must be a power of two"):
    quantize_rows(jnp.zeros((4, 64), jnp.bfloat16), rows=4, layout="natural", max_width=1000)
  with pytest.raises(ValueError, match="layout='plane': quantize_rows writes one of"):
    quantize_rows(jnp.zeros((4, 64), jnp.bfloat16), rows=4, layout="plane")


@pytest.mark.parametrize("layout", ["natural", "planes", "step_planes"])
@pytest.mark.parametrize("prologue,max_width", [
    ("rms_norm", 32768), ("rms_norm", 1024), ("rms_norm+residual", 32768),
    ("rms_norm+residual", 1024), ("swiglu", 32768), ("swiglu", 1024)], ids=str)
def test_quantize_rows_with_a_prologue_is_absmax_int8_of_its_result(prologue, max_width,
                                                                    layout):
  """Interpret mode: the RMS norm (of x, or of x + a residual) or SwiGLU computed in the kernel
  (row in registers, or read in chunks: three passes with the norm), then quantized, against
  `absmax_int8` of the prologue's float32 result from `sbitnet.ops`; rows past M come out zero.
  SwiGLU is elementwise, so exact; the norm's sum of squares runs over the kernel's padded row
  or its chunks, whose float32 rounding XLA's CPU backend need not share with `jnp.mean` over
  the row (it did on one CPU, not on another), so within rounding there."""
  m, k, rows = 3, 2600, 8
  x = activations(jax.random.key(5), (m, 2 * k if prologue == "swiglu" else k), jnp.bfloat16)
  residual = activations(jax.random.key(6), x.shape, jnp.bfloat16)
  pro = (SwiGLUPrologue() if prologue == "swiglu" else
         RMSNormPrologue(jnp.linspace(-1.5, 2.0, k, dtype=jnp.float32), 1e-5,
                         residual if prologue.endswith("residual") else None))
  q, scale, offset = quantize_rows(x, pro, rows=rows, layout=layout, interpret=True,
                                   max_width=max_width)
  xq, x_scale = absmax_int8(pro(x, jnp.float32))
  _assert_layout(q, scale, offset, xq, x_scale, layout, exact=prologue == "swiglu")


@pytest.mark.parametrize("k", [11008, 40000])
def test_quantize_rows_with_prologues_lowers_for_the_gpu(k):
  """Both prologues lowered to Triton IR on the CPU (sigmoid, rsqrt, the casts), in one pass
  and in chunks; a norm scale of the wrong width is refused."""
  for pro, width in [(SwiGLUPrologue(), 2 * k), (RMSNormPrologue(jnp.ones(k), 1e-6), k),
                     (RMSNormPrologue(jnp.ones(k), 1e-6, jnp.ones((5, k), jnp.bfloat16)), k)]:
    quantize = functools.partial(quantize_rows, rows=16, layout="planes", asm=True)
    text = jax.jit(quantize).trace(jax.ShapeDtypeStruct((5, width), jnp.bfloat16), pro).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "xla.gpu.triton" in text
  with pytest.raises(ValueError, match=r"scale has shape \(7,\); x \(4, 64\) needs \[64\]"):
    quantize_rows(jnp.ones((4, 64), jnp.bfloat16), RMSNormPrologue(jnp.ones(7), 1e-6), rows=4,
                  layout="natural")
  with pytest.raises(ValueError, match=r"residual has shape \(4, 32\); x \(4, 64\) needs"):
    quantize_rows(jnp.ones((4, 64), jnp.bfloat16),
                  RMSNormPrologue(jnp.ones(64), 1e-6, jnp.ones((4, 32))), rows=4,
                  layout="natural")
  with pytest.raises(ValueError, match=r"SwiGLU takes x \[..., 2K\].*\(4, 63\), whose last"):
    quantize_rows(jnp.ones((4, 63), jnp.bfloat16), SwiGLUPrologue(), rows=4, layout="natural")
