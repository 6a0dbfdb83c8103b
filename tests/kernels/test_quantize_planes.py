import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.kernels.ternary_matmul import quantize_planes as qp
from sbitnet.ops import absmax_int8
from tests.kernels.base import activations


def _plane_order(xq: np.ndarray, rows: int) -> np.ndarray:
  """NumPy oracle: within each 512-column step, column 128q + 32t + j <- K row 128t + 32q + j."""
  m, k = xq.shape
  ks = -(-k // 512) * 512
  x = np.pad(xq, ((0, rows - m), (0, ks - k)))
  return x.reshape(rows, ks // 512, 4, 4, 32).transpose(0, 1, 3, 2, 4).reshape(rows, ks)


@pytest.mark.parametrize("m,k,rows,dtype", [(5, 1000, 16, jnp.bfloat16),
                                            (16, 2048, 16, jnp.bfloat16),
                                            (3, 700, 3, jnp.float32),
                                            (2, 4864, 16, jnp.float16)], ids=str)
def test_quantize_planes_is_absmax_int8_in_plane_order(m, k, rows, dtype):
  """Interpret mode, exact: the quantized values in plane order (K and rows zero-padded), the
  scale (0 past M) and the sum over planes 0-2, against `absmax_int8` and a NumPy reordering.
  Row 0 has absmax 127 (s = 1) and values at .5, so rounding ties to even is checked too."""
  x = activations(jax.random.key(m * k), (m, k)).astype(dtype)
  ties = jnp.array([127.0, 2.5, -0.5, 3.5, -126.5], dtype)
  x = x.at[0, :5].set(ties).at[0, 5:].set(jnp.clip(x[0, 5:], -100, 100))
  planes, scale, offset = qp.quantize_planes(x, rows=rows, interpret=True)
  xq, x_scale = absmax_int8(x)
  np.testing.assert_array_equal(np.asarray(xq[0, :5]), [127, 2, 0, 4, -126])
  expected = _plane_order(np.asarray(xq), rows)
  assert planes.dtype == jnp.int8 and planes.shape == expected.shape
  np.testing.assert_array_equal(np.asarray(planes), expected)
  np.testing.assert_array_equal(np.asarray(scale),
                                np.pad(np.asarray(x_scale[:, 0]), (0, rows - m)))
  low_planes = expected.reshape(rows, -1, 4, 128)[:, :, :3].astype(np.int64).sum((1, 2, 3))
  np.testing.assert_array_equal(np.asarray(offset), low_planes)


def test_quantize_planes_lowers_for_the_gpu_and_checks_its_inputs():
  """The inline-PTX variant (division and rounding; interpret mode runs jnp) lowered to Triton IR
  on the CPU, at the widest row it takes."""
  quantize = functools.partial(qp.quantize_planes, rows=48, asm=True)
  text = jax.jit(quantize).trace(jax.ShapeDtypeStruct((37, 28672), jnp.bfloat16)).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and "cvt.rni.s32.f32" in text and "div.full.f32" in text
  with pytest.raises(ValueError, match="K <= 32768 and rows >= M, got bfloat16 \\(4, 33000\\)"):
    qp.quantize_planes(jnp.zeros((4, 33000), jnp.bfloat16), rows=4)
  with pytest.raises(ValueError, match="rows=3"):
    qp.quantize_planes(jnp.zeros((4, 64), jnp.bfloat16), rows=3)
  with pytest.raises(ValueError, match="int8 \\(4, 64\\)"):
    qp.quantize_planes(jnp.zeros((4, 64), jnp.int8), rows=4)
