import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.ops import nm_mask
from tests.ops import reference


@pytest.mark.parametrize("n,m", [(6, 8), (2, 4), (4, 8), (2, 8), (7, 8), (1, 8), (3, 8)])
def test_exact_counts_and_matches_reference(n, m):
  w = jax.random.normal(jax.random.key(n * 10 + m), (4 * m, 5))
  mask = nm_mask(w, n, m)
  counts = np.asarray(mask).reshape(4, m, 5).sum(axis=1)
  assert (counts == n).all()
  np.testing.assert_array_equal(mask, reference.nm_mask(w, n, m))


def test_ties_go_to_lower_index():
  w = jnp.array([1.0, -1.0, 1.0, 1.0, 0.5, -0.5, 0.5, 0.5])[:, None]
  np.testing.assert_array_equal(nm_mask(w, 2, 4)[:, 0],
                                [True, True, False, False, True, True, False, False])
  np.testing.assert_array_equal(nm_mask(jnp.zeros((8, 1)), 6, 8)[:, 0], [True] * 6 + [False] * 2)


def test_groups_run_along_contraction_axis_of_flax_kernel():
  # Column 0 grows along `in`, so groups along axis 0 keep the last n of every m rows; grouping
  # along `out` would instead depend on the column values.
  w = jnp.tile(jnp.arange(1.0, 9.0)[:, None], (1, 3)) * jnp.array([1.0, 10.0, 100.0])
  mask = nm_mask(w, 2, 4)
  np.testing.assert_array_equal(mask[:, 0], [False, False, True, True] * 2)
  assert mask.shape == (8, 3) and (mask[:, 0] == mask[:, 2]).all()


def test_other_axis():
  w = jax.random.normal(jax.random.key(1), (3, 16))
  np.testing.assert_array_equal(nm_mask(w, 2, 4, axis=1), nm_mask(w.T, 2, 4, axis=0).T)
  np.testing.assert_array_equal(nm_mask(w, 2, 4, axis=-1), nm_mask(w, 2, 4, axis=1))


def test_nan_is_kept_and_counts_stay_exact():
  w = jnp.array([0.1, jnp.nan, 0.3, 0.2])[:, None]
  np.testing.assert_array_equal(nm_mask(w, 2, 4)[:, 0], [False, True, True, False])


def test_bf16_input_and_numpy_integer_pattern():
  w = jax.random.normal(jax.random.key(2), (8, 4), jnp.bfloat16)
  assert nm_mask(w, 6, 8).dtype == jnp.bool_
  np.testing.assert_array_equal(nm_mask(w, np.int64(6), np.int64(8)), nm_mask(w, 6, 8))


def test_signed_integers_rank_by_exact_magnitude():
  """int8 -128 is the largest magnitude (jnp.abs would wrap it to -128, the smallest)."""
  w = jnp.array([[-128], [5], [3], [0], [-7], [127], [-127], [1]], jnp.int8)
  assert nm_mask(w, 1, 4).ravel().tolist() == [True, False, False, False,
                                                False, True, False, False]
  w32 = jnp.array([[-2**31], [2**31 - 1]], jnp.int32)
  assert nm_mask(w32, 1, 2).ravel().tolist() == [True, False]


@pytest.mark.parametrize("n,m,shape,match", [
    (0, 8, (16, 4), "1 <= n < m"),
    (9, 8, (16, 4), "1 <= n < m"),
    (8, 8, (16, 4), "1 <= n < m.*n=None and m=None for a dense weight"),
    (6.0, 8, (16, 4), "must be integers"),
    (6, 8, (12, 4), r"shape \(12, 4\).*axis 0 has size 12.*m=8.*Valid m for this axis: 2, 3, 4, 6, 12"),
    (2, 4, (7, 4), "axis 0 has size 7"),
])
def test_invalid_patterns(n, m, shape, match):
  with pytest.raises(ValueError, match=match):
    nm_mask(jnp.ones(shape), n, m)


def test_invalid_axis():
  with pytest.raises(ValueError, match="axis=2 is out of range"):
    nm_mask(jnp.ones((8, 8)), 2, 4, axis=2)
