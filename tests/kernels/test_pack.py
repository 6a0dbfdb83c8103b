import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.kernels import FORMAT_VERSION, PackedTernary, bits_per_weight, pack, unpack
from sbitnet.kernels.ternary_matmul.pack import PLANE_ROWS, TILE_K
from tests.kernels.base import PATTERNS, ternary


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("k,n", [(128, 16), (200, 24), (1024, 48)])
def test_round_trip_is_bit_exact(pattern, k, n):
  if pattern[1] and k % pattern[1]:
    pytest.skip("m does not divide k")
  t = ternary(jax.random.key(k + n), k, n, pattern)
  gamma = jnp.float32(0.0123)
  t2, g2 = unpack(pack(t, gamma))
  assert t2.dtype == jnp.int8 and t2.shape == t.shape
  np.testing.assert_array_equal(t2, t)
  assert g2.dtype == jnp.float32 and g2.shape == () and g2 == gamma


def test_round_trip_with_split_gammas():
  t = ternary(jax.random.key(0), 256, 48, (6, 8))
  gamma = jnp.array([0.1, 0.2, 0.3], jnp.float32)
  p = pack(t, gamma, split=(16, 8, 24))
  t2, g2 = unpack(p)
  np.testing.assert_array_equal(t2, t)
  np.testing.assert_array_equal(g2, gamma)
  np.testing.assert_array_equal(p.scale, np.repeat([0.1, 0.2, 0.3], [16, 8, 24]).astype(np.float32))


def test_bit_layout_matches_the_documented_format():
  k, n = 2 * TILE_K, 3
  t = np.zeros((k, n), np.int8)
  row = TILE_K + 2 * PLANE_ROWS + 5  # tile 1, plane 2, byte 5
  t[row, 1] = 1
  t[3, 2] = -1  # tile 0, plane 0, byte 3
  codes = np.asarray(pack(jnp.asarray(t), jnp.float32(1)).codes)
  expected = np.full((n, k // 4), 0x55, np.uint8)  # code 1 (weight 0) in all four fields
  expected[1, PLANE_ROWS + 5] = 0x55 + (1 << 4)    # plane 2 field: code 2 (weight +1)
  expected[2, 3] = 0x55 - 1                        # plane 0 field: code 0 (weight -1)
  np.testing.assert_array_equal(codes, expected)


def test_bits_per_weight_at_4096():
  p = jax.eval_shape(lambda t: pack(t, jnp.float32(1)),
                     jax.ShapeDtypeStruct((4096, 4096), jnp.int8))
  assert bits_per_weight(p) <= 2.05


def test_is_a_pytree_usable_under_jit():
  p = pack(ternary(jax.random.key(1), 128, 16, (2, 4)), jnp.float32(0.5))
  leaves, treedef = jax.tree_util.tree_flatten(p)
  assert len(leaves) == 2
  p2 = jax.jit(lambda q: q)(p)
  assert isinstance(p2, PackedTernary) and p2.version == FORMAT_VERSION
  np.testing.assert_array_equal(jax.tree_util.tree_unflatten(treedef, leaves).codes, p2.codes)


def test_errors_name_the_problem():
  t = ternary(jax.random.key(2), 128, 16, (None, None))
  with pytest.raises(ValueError, match="int8"):
    pack(t.astype(jnp.int32), jnp.float32(1))
  with pytest.raises(ValueError, match="gamma"):
    pack(t, jnp.ones((2,), jnp.float32))
  with pytest.raises(ValueError, match="split"):
    pack(t, jnp.ones((2,), jnp.float32), split=(8, 4))
  p = pack(t, jnp.float32(1))
  with pytest.raises(ValueError, match="version 7"):
    unpack(dataclasses.replace(p, version=7))
  with pytest.raises(ValueError, match="uint8"):
    unpack(dataclasses.replace(p, codes=p.codes.astype(jnp.int8)))
  with pytest.raises(ValueError, match=r"split=\(8, 4\) adds up to 12, but the weight has 16"):
    unpack(dataclasses.replace(p, split=(8, 4)))


def test_values_outside_ternary_raise_eagerly_and_stay_in_their_row_under_jit():
  """A code out of {-1, 0, 1} would carry into the next bit plane (another K row): eagerly it is
  an error naming it; under jit (no value to check) it is clipped, so only its own weight
  changes."""
  t = jnp.zeros((128, 2), jnp.int8).at[0, 1].set(-2)
  with pytest.raises(ValueError, match=r"t\[0, 1\] = -2"):
    pack(t, jnp.float32(1))
  codes = jax.jit(lambda t: pack(t, jnp.float32(1)).codes)(t)
  unpacked = unpack(PackedTernary(codes, jnp.ones(2, jnp.float32), in_features=128))[0]
  np.testing.assert_array_equal(unpacked, jnp.clip(t, -1, 1))
