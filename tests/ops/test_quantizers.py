import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.ops import (absmax_int8, absmean_scale, absmean_ternary, fake_ternary,
                         quantize_activations, scale_per_column)
from tests.ops import reference


def test_absmean_ternary_matches_formula():
  w = jax.random.normal(jax.random.key(0), (64, 48)) * 0.05
  t, gamma = absmean_ternary(w)
  t_ref, gamma_ref = reference.absmean_ternary(w)
  assert t.dtype == jnp.int8 and gamma.dtype == jnp.float32 and gamma.shape == ()
  np.testing.assert_allclose(gamma, gamma_ref, rtol=1e-6)
  np.testing.assert_array_equal(t, t_ref)
  assert set(np.unique(t)) <= {-1, 0, 1}
  np.testing.assert_allclose(t * gamma, fake_ternary(w, gamma), rtol=1e-6)


def test_round_half_to_even():
  w = jnp.array([[0.5, -0.5, 1.5, -1.5]])
  gamma = jnp.float32(1.0)
  t, _ = reference.absmean_ternary(np.asarray(w))
  np.testing.assert_array_equal(np.clip(np.round(np.asarray(w)), -1, 1), [[0, 0, 1, -1]])
  np.testing.assert_array_equal(fake_ternary(w, gamma), [[0.0, 0.0, 1.0, -1.0]])


def test_split_gives_one_gamma_per_fused_output():
  key = jax.random.key(1)
  w = jnp.concatenate([jax.random.normal(key, (32, 16)) * s for s in (0.1, 1.0, 10.0)], axis=1)
  w = w[:, :40]  # sizes 16, 16, 8
  split = (16, 16, 8)
  t, gamma = absmean_ternary(w, split)
  t_ref, gamma_ref = reference.absmean_ternary(w, split)
  assert gamma.shape == (3,)
  np.testing.assert_allclose(gamma, gamma_ref, rtol=1e-6)
  np.testing.assert_array_equal(t, t_ref)
  assert scale_per_column(gamma, split).shape == (40,)
  with pytest.raises(ValueError, match=r"split=\(16, 16\) must be positive sizes that add up"):
    absmean_scale(w, (16, 16))


def test_absmax_int8_matches_formula():
  x = jax.random.normal(jax.random.key(2), (4, 7, 32)) * 3
  q, scale = absmax_int8(x)
  q_ref, s_ref = reference.absmax_quant(x)
  assert q.dtype == jnp.int8 and scale.shape == (4, 7, 1)
  np.testing.assert_array_equal(q, q_ref)
  np.testing.assert_allclose(scale, 1 / s_ref, rtol=1e-6)
  np.testing.assert_allclose(q * scale, x, atol=float(jnp.max(jnp.abs(x))) / 127)


def test_absmax_int8_axis():
  x = jax.random.normal(jax.random.key(3), (32, 5))
  q, scale = absmax_int8(x, axis=0)
  np.testing.assert_array_equal(q, absmax_int8(x.T)[0].T)
  assert scale.shape == (1, 5)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_activations_values_and_identity_gradient(bits):
  x = jax.random.normal(jax.random.key(4), (3, 64))
  q_ref, s_ref = reference.absmax_quant(x, bits)
  np.testing.assert_allclose(quantize_activations(x, bits), q_ref / s_ref, rtol=1e-6, atol=1e-7)
  g = jax.grad(lambda x: jnp.sum(quantize_activations(x, bits) * jnp.arange(64.0)))(x)
  np.testing.assert_array_equal(g, jnp.broadcast_to(jnp.arange(64.0), x.shape))


def test_quantize_activations_keeps_bf16():
  x = jax.random.normal(jax.random.key(5), (2, 16), jnp.bfloat16)
  assert quantize_activations(x).dtype == jnp.bfloat16


def test_zero_input_is_finite():
  assert jnp.isfinite(quantize_activations(jnp.zeros((2, 8)))).all()
  t, gamma = absmean_ternary(jnp.zeros((8, 8)))
  assert (t == 0).all() and gamma == 0


def test_bad_inputs():
  with pytest.raises(ValueError, match="floating-point.*int32.*latent"):
    absmean_ternary(jnp.ones((8, 8), jnp.int32))
  with pytest.raises(ValueError, match="gamma has shape \\(3,\\); split=\\(1, 2\\) needs \\(2,\\)"):
    fake_ternary(jnp.ones((2, 3)), jnp.ones(3), split=(1, 2))
  with pytest.raises(ValueError, match="split=\\(1, 1\\) must be positive sizes that add up"):
    fake_ternary(jnp.ones((2, 3)), jnp.ones(2), split=(1, 1))
  with pytest.raises(ValueError, match="act_bits=3 is not supported"):
    quantize_activations(jnp.ones((2, 8)), bits=3)
