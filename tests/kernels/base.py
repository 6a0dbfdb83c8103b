"""Shared inputs for the kernel tests: random, never-zero activations and N:M ternary weights."""

import jax
import jax.numpy as jnp
import numpy as np

PATTERNS = [(2, 4), (4, 8), (6, 8), (2, 8), (None, None)]


def activations(key, shape, dtype=jnp.bfloat16):
  """Normal values pushed away from zero (|x| >= 0.1), so an unread input cannot hide."""
  x = jax.random.normal(key, shape, jnp.float32)
  return jnp.where(jnp.abs(x) < 0.1, jnp.sign(x + 1e-9) * 0.1, x).astype(dtype)


def ternary(key, k, n, pattern):
  """int8 `[k, n]` in {-1, 0, 1}: exactly n_keep nonzeros per group of m along k (dense: all
  nonzero), so every weight code and every group position is exercised."""
  n_keep, m = pattern
  kv, kp = jax.random.split(key)
  signs = jnp.where(jax.random.bernoulli(kv, 0.5, (k, n)), 1, -1).astype(jnp.int8)
  if n_keep is None:
    return signs
  ranks = jnp.argsort(jax.random.uniform(kp, (k // m, m, n)), axis=1)
  keep = (ranks < n_keep).reshape(k, n)
  return jnp.where(keep, signs, 0).astype(jnp.int8)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)
