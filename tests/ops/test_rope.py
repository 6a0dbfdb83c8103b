import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.ops import apply_rope, rope_tables


def test_rotation_matches_the_rotate_half_formula():
  x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
  cos, sin = rope_tables(jnp.arange(5)[None] + jnp.array([[0], [7]]), 8, 10000.0)
  inv_freq = 10000.0 ** (-np.arange(0, 8, 2) / 8)
  angles = (np.arange(5)[None, :, None] + np.array([0, 7])[:, None, None]) * inv_freq
  c, s = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))
  xn = np.asarray(x)
  rotated = np.concatenate([-xn[..., 4:], xn[..., :4]], -1)
  np.testing.assert_allclose(apply_rope(x, cos, sin), xn * c[:, :, None] + rotated * s[:, :, None],
                             rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_clear_errors():
  with pytest.raises(ValueError, match="head_dim=7: RoPE rotates pairs"):
    rope_tables(jnp.arange(4)[None], 7, 10000.0)
  cos, sin = rope_tables(jnp.arange(4)[None], 8, 10000.0)
  with pytest.raises(ValueError, match=r"got x \(1, 4, 2, 6\), cos \(1, 4, 8\)"):
    apply_rope(jnp.ones((1, 4, 2, 6)), cos, sin)
  with pytest.raises(ValueError, match=r"x \[B, T, heads, head_dim\]"):
    apply_rope(jnp.ones((4, 2, 8)), cos[0], sin[0])
