import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.kernels import pack, ternary_matmul, ternary_swiglu_mlp, unpack_int8
from sbitnet.kernels.ternary_matmul import config as config_lib
from sbitnet.kernels.ternary_matmul import gemv_dp4a
from sbitnet.kernels.ternary_matmul.gemv_dp4a import GemvConfig
from sbitnet.kernels.ternary_matmul.quantize_rows import quantize_rows
from sbitnet.ops import RMSNormPrologue, SwiGLUPrologue
from tests.kernels.base import activations, ternary

# K off the 128-row tiles and off every step; F a multiple of 16 and of the gated configs' rows;
# N = 80 is padded to 96 by the down GEMV's wrapper.
K, F, N = 712, 96, 80


def _block(seed, pattern=(6, 8)):
  kg, kd = jax.random.split(jax.random.key(seed))
  gate_up = pack(ternary(kg, K, 2 * F, pattern), jnp.array([0.021, 0.034], jnp.float32), (F, F))
  down = pack(ternary(kd, F, N, pattern), jnp.float32(0.047))
  return gate_up, down


def _two_calls(x, gate_up, down, prologue, implementation="xla"):
  h = ternary_matmul(x, gate_up, quantize_x=True, implementation=implementation,
                     prologue=prologue)
  return ternary_matmul(h, down, quantize_x=True, implementation=implementation,
                        prologue=SwiGLUPrologue())


@pytest.mark.parametrize("prologue", [None, "norm+residual"])
@pytest.mark.parametrize("pattern", [(6, 8), (2, 4)], ids=["6:8", "2:4"])
def test_gated_gemv_pair_equals_the_two_calls(pattern, prologue):
  """One row (leading dims [1, 1], as a decode step) through the gated GEMV pair in interpret
  mode: the same float32 gating and int8 activations as the XLA path's two calls, so
  bit-identical."""
  gate_up, down = _block(3, pattern)
  x = activations(jax.random.key(4), (1, 1, K))
  pro = None if prologue is None else RMSNormPrologue(
      jnp.linspace(0.5, 2.0, K, dtype=jnp.float32), 1e-6, activations(jax.random.key(5), x.shape))
  assert config_lib.gated_gemv_serves(1)
  ref = _two_calls(x, gate_up, down, pro)
  out = ternary_swiglu_mlp(x, gate_up, down, prologue=pro, implementation="pallas")
  assert out.shape == (1, 1, N) and out.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))
  xla = ternary_swiglu_mlp(x, gate_up, down, prologue=pro, implementation="xla")
  np.testing.assert_array_equal(np.asarray(xla, np.float32), np.asarray(ref, np.float32))


def test_more_rows_take_the_two_calls_with_kept_int8_weights():
  """Three rows: the dispatcher takes the two calls (with the kept int8 weights); explicit configs
  run the gated pair on every row, the same values."""
  gate_up, down = _block(6)
  x = activations(jax.random.key(7), (3, K))
  assert not config_lib.gated_gemv_serves(3)
  out = ternary_swiglu_mlp(x, gate_up, down, implementation="pallas",
                           gate_up_int8=unpack_int8(gate_up), down_int8=unpack_int8(down))
  ref = np.asarray(_two_calls(x, gate_up, down, None), np.float32)
  np.testing.assert_array_equal(np.asarray(out, np.float32), ref)
  pair = ternary_swiglu_mlp(x, gate_up, down, implementation="pallas",
                            configs=(GemvConfig(block_n=8, block_w=64), GemvConfig(block_n=4)))
  np.testing.assert_array_equal(np.asarray(pair, np.float32), ref)


@pytest.mark.parametrize("gate_config,down_config", [
    (GemvConfig(block_n=16, block_w=64), GemvConfig(block_n=8, block_w=256, num_warps=8)),
    (GemvConfig(block_n=32, block_w=16), GemvConfig(block_n=16, block_w=16)),
    (GemvConfig(block_n=1, block_w=128), GemvConfig(block_n=1, block_w=128))], ids=str)
def test_gated_kernels_write_every_column(gate_config, down_config):
  """Each kernel of the pair at several tilings: h and its absmax parts against XLA's gating of
  the gate/up GEMV's output, and the down GEMV (output poisoned) against the GEMV on
  `quantize_rows(h)`."""
  gate_up, down = _block(8)
  x = activations(jax.random.key(9), (1, K))
  # The kernels themselves on a GPU: interpreted there, XLA's excess precision would skip the
  # epilogue's rounding to bfloat16.
  interpret = jax.default_backend() != "gpu"
  xq, row_scale, row_sum = quantize_rows(x, rows=1, plane_order=False, interpret=interpret)
  h, amax = gemv_dp4a.gated(xq, row_scale, row_sum, gate_up.codes, gate_up.scale,
                            config=gate_config, out_dtype=jnp.bfloat16, interpret=interpret)
  y = gemv_dp4a.matmul(xq, row_scale, row_sum, gate_up.codes, gate_up.scale, config=gate_config,
                       out_dtype=jnp.bfloat16, interpret=interpret)
  # Bit for bit in interpret mode on the CPU; a GPU's sigmoid may round differently from XLA's.
  np.testing.assert_allclose(np.asarray(h), np.asarray(SwiGLUPrologue()(y, jnp.float32)),
                             rtol=1e-6)
  assert amax.shape == (1, F // gate_config.block_n)
  np.testing.assert_array_equal(
      np.asarray(amax)[0], np.abs(np.asarray(h)[0]).reshape(-1, gate_config.block_n).max(1))
  n16 = 96
  codes = jnp.pad(down.codes, ((0, n16 - N), (0, 0)), constant_values=0x55)
  scale = jnp.pad(down.scale, (0, n16 - N))
  out = gemv_dp4a.matmul_from_parts(h, amax, codes, scale, config=down_config,
                                    out_dtype=jnp.bfloat16, interpret=interpret,
                                    out_init=jnp.full((1, n16), jnp.nan, jnp.bfloat16))
  hq, h_scale, h_sum = quantize_rows(h, rows=1, plane_order=False, interpret=interpret)
  ref = gemv_dp4a.matmul(hq, h_scale, h_sum, codes, scale, config=down_config,
                         out_dtype=jnp.bfloat16, interpret=interpret)
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


def test_gated_kernels_lower_for_the_gpu():
  """Both kernels of the pair lowered to Triton IR (dp4a and the int conversion inline)."""
  x = jax.ShapeDtypeStruct((1, K), jnp.int8)
  rows = [jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32)]
  gate_up = [jax.ShapeDtypeStruct((2 * F, 192), jnp.uint8),
             jax.ShapeDtypeStruct((2 * F,), jnp.float32)]
  gated = functools.partial(gemv_dp4a.gated, config=GemvConfig(block_n=16, block_w=64),
                            out_dtype=jnp.bfloat16, asm=True)
  text = jax.jit(gated).trace(x, *rows, *gate_up).lower(lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and "dp4a.u32.s32" in text
  from_parts = functools.partial(gemv_dp4a.matmul_from_parts,
                                 config=GemvConfig(block_n=8, block_w=256, num_warps=8),
                                 out_dtype=jnp.bfloat16, asm=True)
  args = [jax.ShapeDtypeStruct((1, F), jnp.float32), jax.ShapeDtypeStruct((1, 6), jnp.float32),
          jax.ShapeDtypeStruct((96, 32), jnp.uint8), jax.ShapeDtypeStruct((96,), jnp.float32)]
  text = jax.jit(from_parts).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and "cvt.rni" in text


def test_swiglu_mlp_errors_name_the_problem():
  gate_up, down = _block(10)
  x = activations(jax.random.key(11), (1, K))
  with pytest.raises(ValueError, match=r"gate_up must have 2F outputs .* F = 80"):
    ternary_swiglu_mlp(x, gate_up, pack(jnp.zeros((N, N), jnp.int8), jnp.float32(1)))
  with pytest.raises(ValueError, match="an RMSNormPrologue or None; got SwiGLUPrologue"):
    ternary_swiglu_mlp(x, gate_up, down, prologue=SwiGLUPrologue())
  with pytest.raises(ValueError, match="configs=.* select the gated GEMV pair: it needs"):
    ternary_swiglu_mlp(x, gate_up, down, implementation="xla",
                       configs=(GemvConfig(block_n=8), GemvConfig(block_n=4)))
  with pytest.raises(ValueError, match="x's last axis must be 712"):
    ternary_swiglu_mlp(x[:, :100], gate_up, down)
  with pytest.raises(ValueError, match="F a multiple of block_n=64"):
    xq, row_scale, row_sum = quantize_rows(x, rows=1, plane_order=False, interpret=True)
    gemv_dp4a.gated(xq, row_scale, row_sum, gate_up.codes, gate_up.scale,
                    config=GemvConfig(block_n=64), out_dtype=jnp.bfloat16, interpret=True)
