import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.kernels import sparse_quantize_pack, unpack
from sbitnet.ops import absmean_ternary, nm_mask
from tests.kernels.base import PATTERNS, activations


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("pattern", PATTERNS + [(1, 16)], ids=lambda p: f"{p[0]}:{p[1]}")
@pytest.mark.parametrize("k,n", [(256, 64), pytest.param(208, 40, marks=pytest.mark.slow)])
def test_fused_kernel_matches_the_ops_bit_for_bit(k, n, pattern, dtype):
  if pattern[1] and k % pattern[1]:
    pytest.skip("m does not divide k")
  w = activations(jax.random.key(k + n), (k, n), dtype)
  fused = sparse_quantize_pack(w, *pattern, implementation="pallas")
  t, gamma = unpack(fused)
  t_ref, g_ref = absmean_ternary(w)
  if pattern[0] is not None:
    t_ref = t_ref * nm_mask(w, *pattern).astype(jnp.int8)
  np.testing.assert_array_equal(t, t_ref)
  assert gamma == g_ref
  unfused = sparse_quantize_pack(w, *pattern, implementation="xla")
  np.testing.assert_array_equal(fused.codes, unfused.codes)
  np.testing.assert_array_equal(fused.scale, unfused.scale)


def test_off_tile_shape_6_8():
  w = activations(jax.random.key(1), (208, 40), jnp.bfloat16)
  fused = sparse_quantize_pack(w, 6, 8, implementation="pallas")
  np.testing.assert_array_equal(fused.codes, sparse_quantize_pack(w, 6, 8).codes)


def test_ties_go_to_the_lower_index_and_split_gammas():
  w = jnp.tile(jnp.array([[1.0], [-1.0], [1.0], [0.5]], jnp.float32), (32, 48))
  w = w * jnp.repeat(jnp.array([1.0, 3.0]), 24)[None, :]
  p = sparse_quantize_pack(w, 2, 4, split=(24, 24), implementation="pallas")
  t, gamma = unpack(p)
  np.testing.assert_array_equal(t[:4, 0], [1, -1, 0, 0])
  np.testing.assert_array_equal(p.codes, sparse_quantize_pack(w, 2, 4, split=(24, 24)).codes)
  assert gamma.shape == (2,) and gamma[1] == 3 * gamma[0]


def test_errors_name_the_problem():
  w = activations(jax.random.key(0), (96, 16), jnp.float32)
  with pytest.raises(ValueError, match="m in"):
    sparse_quantize_pack(w, 3, 6, implementation="pallas")
  with pytest.raises(ValueError, match="not divisible by m=5"):
    sparse_quantize_pack(w, 2, 5)
  with pytest.raises(ValueError, match="floating-point"):
    sparse_quantize_pack(w.astype(jnp.int8), 2, 4)
  with pytest.raises(ValueError, match="2-D"):
    sparse_quantize_pack(w[None], 2, 4)
  p = sparse_quantize_pack(w, 3, 6)  # any pattern through the XLA path
  assert p.shape == (96, 16)
