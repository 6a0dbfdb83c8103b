"""Property tests over random shapes and patterns. The ops run jitted, as training runs them: one
compile per drawn shape instead of one per op (test_transforms.py checks jit against eager)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from sbitnet.ops import nm_mask, sparse_ternary_weight, zero_fraction
from tests.ops import reference

patterns = st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8), (6, 8), (7, 8), (5, 16)])

nm_mask_jit = jax.jit(nm_mask, static_argnums=(1, 2))


@functools.partial(jax.jit, static_argnums=(2, 3))
def effective_weight(w, c, n, m):
  """(the n:m effective weight of `w`, its zero fraction, the gradient of <w_eff, c> by `w`)."""
  w_eff = sparse_ternary_weight(w, n, m)
  grad = jax.grad(lambda w: jnp.vdot(sparse_ternary_weight(w, n, m), c))(w)
  return w_eff, zero_fraction(w_eff), grad


@settings(max_examples=20, deadline=None)
@given(pattern=patterns, groups=st.integers(1, 4), cols=st.integers(1, 5), seed=st.integers(0, 2**31),
       ties=st.booleans())
def test_mask_properties(pattern, groups, cols, seed, ties):
  n, m = pattern
  w = np.random.default_rng(seed).normal(size=(groups * m, cols)).astype(np.float32)
  if ties:
    w = np.round(w)
  mask = np.asarray(nm_mask_jit(jnp.asarray(w), n, m))
  assert (mask.reshape(groups, m, cols).sum(1) == n).all()
  np.testing.assert_array_equal(mask, reference.nm_mask(w, n, m))
  kept = np.where(mask, np.abs(w), np.inf).reshape(groups, m, cols).min(1)
  dropped = np.where(mask, -np.inf, np.abs(w)).reshape(groups, m, cols).max(1)
  assert (kept >= dropped).all()


@settings(max_examples=12, deadline=None)
@given(pattern=patterns, groups=st.integers(1, 4), cols=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_effective_weight_properties(pattern, groups, cols, seed):
  n, m = pattern
  w = jnp.asarray(np.random.default_rng(seed).normal(size=(groups * m, cols)) * 0.1, jnp.float32)
  c = jnp.asarray(np.random.default_rng(seed + 1).normal(size=w.shape), jnp.float32)
  w_eff, zeros, g = effective_weight(w, c, n, m)
  t, gamma = reference.absmean_ternary(w)
  np.testing.assert_allclose(w_eff, reference.nm_mask(w, n, m) * t * gamma, rtol=1e-6)
  assert float(zeros) >= 1 - n / m - 1e-7
  np.testing.assert_array_equal(g, c)
