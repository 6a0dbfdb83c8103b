import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.ops import (bitlinear, quantize_activations, sparse_ternary_dot_general,
                         sparse_ternary_weight)
from tests.ops import reference

W = jax.random.normal(jax.random.key(0), (32, 24)) * 0.02
G = jax.random.normal(jax.random.key(1), (32, 24))


def grad_of(**options):
  return jax.grad(lambda w: jnp.sum(sparse_ternary_weight(w, **options) * G))(W)


def test_quant_then_mask_equals_masked_quantized_weight():
  t, gamma = reference.absmean_ternary(W)
  expected = reference.nm_mask(W, 6, 8) * t * gamma
  np.testing.assert_allclose(sparse_ternary_weight(W, 6, 8), expected, rtol=1e-6)
  # identical to quantizing mask ⊙ W with the dense gamma
  masked = np.where(reference.nm_mask(W, 6, 8), W, 0)
  np.testing.assert_allclose(sparse_ternary_weight(W, 6, 8),
                             np.clip(np.round(masked / gamma), -1, 1) * gamma, rtol=1e-6)


def test_arms_forward():
  np.testing.assert_array_equal(sparse_ternary_weight(W, quant="none"), W)
  np.testing.assert_array_equal(sparse_ternary_weight(W, 2, 4, quant="none"),
                                np.where(reference.nm_mask(W, 2, 4), W, 0))
  t, gamma = reference.absmean_ternary(W)
  np.testing.assert_allclose(sparse_ternary_weight(W), t * gamma, rtol=1e-6)


def test_zero_fraction_at_least_pattern_share():
  w_eff = sparse_ternary_weight(W, 6, 8)
  assert float(jnp.mean(w_eff == 0)) >= 1 - 6 / 8


@pytest.mark.parametrize("options", [
    dict(n=6, m=8), dict(n=2, m=4, quant="none"), dict(), dict(n=6, m=8, order="mask_then_quant"),
    dict(n=6, m=8, mask_from="quantized")])
def test_dual_ste_gradient_is_identity(options):
  np.testing.assert_array_equal(grad_of(**options), G)


def test_masked_gradient_reaches_only_kept_weights():
  np.testing.assert_array_equal(grad_of(n=6, m=8, grad="masked"),
                                np.where(reference.nm_mask(W, 6, 8), G, 0))


def test_sr_ste_decays_pruned_weights():
  lam = 2e-4
  expected = G + lam * np.where(reference.nm_mask(W, 2, 4), 0, W)
  np.testing.assert_allclose(grad_of(n=2, m=4, sr_ste=lam), expected, rtol=1e-6)


def test_mask_then_quant_uses_gamma_of_masked_weight():
  mask = reference.nm_mask(W, 6, 8)
  masked = np.where(mask, np.asarray(W, np.float64), 0)
  gamma = np.abs(masked).mean()
  expected = np.clip(np.round(masked / gamma), -1, 1) * gamma
  np.testing.assert_allclose(sparse_ternary_weight(W, 6, 8, order="mask_then_quant"), expected,
                             rtol=1e-6)


def test_mask_from_quantized_ranks_ternary_codes_with_ties_to_lower_index():
  t, gamma = reference.absmean_ternary(W)
  mask = reference.nm_mask(t, 6, 8)
  np.testing.assert_allclose(sparse_ternary_weight(W, 6, 8, mask_from="quantized"),
                             mask * t * gamma, rtol=1e-6)
  assert not np.array_equal(mask, reference.nm_mask(W, 6, 8))


def test_split_keeps_one_gamma_per_projection():
  w = jnp.concatenate([W[:, :8] * 10, W[:, 8:16], W[:, 16:] * 0.1], axis=1)
  t, gammas = reference.absmean_ternary(w, (8, 8, 8))
  expected = reference.nm_mask(w, 6, 8) * t * np.repeat(gammas, 8)
  np.testing.assert_allclose(sparse_ternary_weight(w, 6, 8, split=(8, 8, 8)), expected, rtol=1e-6)


def test_keeps_dtype():
  wb = W.astype(jnp.bfloat16)
  assert sparse_ternary_weight(wb, 6, 8).dtype == jnp.bfloat16
  assert jax.grad(lambda w: sparse_ternary_weight(w, 6, 8).astype(jnp.float32).sum())(wb).dtype \
      == jnp.bfloat16


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=6, m=8, quant="int4"), "quant='int4' is not valid; choose one of 'ternary', 'none'"),
    (dict(n=6, m=8, grad="sparse"), "grad='sparse' is not valid"),
    (dict(n=6), "needs both n and m"),
    (dict(n=6, m=8, mask_from="quantized", quant="none"), "mask_from='quantized' needs"),
    (dict(n=4, m=5, axis=1), "does not fit a weight of shape \\(32, 24\\).*axis 1 has size 24"),
    (dict(n=8, m=8), "need 1 <= n < m"),
])
def test_invalid_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sparse_ternary_weight(W, **kwargs)


def test_integer_weight_is_rejected():
  with pytest.raises(ValueError, match="floating-point array, got dtype int8"):
    sparse_ternary_weight(jnp.ones((8, 8), jnp.int8), 2, 4)


def test_bitlinear_equals_manual_composition():
  x = jax.random.normal(jax.random.key(2), (2, 5, 32))
  expected = quantize_activations(x) @ sparse_ternary_weight(W, 6, 8)
  np.testing.assert_allclose(bitlinear(x, W, 6, 8), expected, rtol=1e-5, atol=1e-6)
  # full-precision arms leave activations alone
  np.testing.assert_allclose(bitlinear(x, W, 6, 8, quant="none"),
                             x @ sparse_ternary_weight(W, 6, 8, quant="none"), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bitlinear(x, W, act_bits=None), x @ sparse_ternary_weight(W),
                             rtol=1e-5, atol=1e-6)


def test_bitlinear_checks_widths_and_act_bits():
  with pytest.raises(ValueError, match=r"x's contracting axis \(24\) must match the kernel's "
                                       r"\(32 inputs\)"):
    bitlinear(jnp.ones((2, 24)), W, 6, 8)
  with pytest.raises(ValueError, match="act_bits=3 is not supported"):
    bitlinear(jnp.ones((2, 32)), W, 6, 8, quant="none", act_bits=3)
  with pytest.raises(ValueError, match="x must be a floating-point array.*pass the float "
                                       "activations"):
    bitlinear(jnp.ones((2, 32), jnp.int8), W, 6, 8)


def test_weight_spec_takes_a_list_of_axis_names():
  from sbitnet.ops import WeightSpec
  assert hash(WeightSpec(6, 8, axis_name=["data", "fsdp"])) == hash(
      WeightSpec(6, 8, axis_name=("data", "fsdp")))


def test_bitlinear_bf16_in_bf16_out():
  x = jax.random.normal(jax.random.key(3), (4, 32), jnp.bfloat16)
  assert bitlinear(x, W, 6, 8).dtype == jnp.bfloat16


def test_dot_general_rejects_axis_and_batch_dims():
  with pytest.raises(ValueError, match="do not pass axis"):
    sparse_ternary_dot_general(6, 8, axis=1)
  dg = sparse_ternary_dot_general(6, 8)
  with pytest.raises(ValueError, match="one contracting dimension and no batch"):
    dg(jnp.ones((2, 4, 8)), jnp.ones((2, 8, 8)), (((2,), (1,)), ((0,), (0,))))


def test_dot_general_groups_along_contracting_dim_of_transposed_kernel():
  x = jax.random.normal(jax.random.key(4), (3, 32))
  dg = sparse_ternary_dot_general(6, 8)
  y = dg(x, W.T, (((1,), (1,)), ((), ())))  # kernel in [out, in] layout
  np.testing.assert_allclose(y, bitlinear(x, W, 6, 8), rtol=1e-5, atol=1e-6)
