import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from sbitnet.nn import RMSNorm, SparseBitLinear
from sbitnet.ops import (SwiGLUPrologue, absmax_int8, bitlinear, nm_mask, quantize_activations,
                         sparse_ternary_dot_general, swiglu)

X = jax.random.normal(jax.random.key(0), (2, 3, 32))


@pytest.mark.parametrize("quant,n,m", [("none", None, None), ("none", 6, 8), ("ternary", None, None),
                                       ("ternary", 6, 8)])
def test_four_arms_match_bitlinear(quant, n, m):
  layer = SparseBitLinear(32, 16, n=n, m=m, quant=quant, rngs=nnx.Rngs(0))
  assert layer.kernel[...].shape == (32, 16) and layer.kernel[...].dtype == jnp.float32
  np.testing.assert_allclose(layer(X), bitlinear(X, layer.kernel[...], n, m, quant=quant),
                             rtol=1e-6)


def test_dense_bf16_arm_is_plain_matmul():
  layer = SparseBitLinear(32, 16, quant="none", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(layer(X), X @ layer.kernel[...], rtol=1e-6)


def test_bf16_compute_and_logical_axes():
  layer = SparseBitLinear(32, 16, n=2, m=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert layer(X).dtype == jnp.bfloat16
  assert layer.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")


def test_gradient_reaches_pruned_latent_weights():
  layer = SparseBitLinear(32, 16, n=2, m=4, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda l: jnp.sum(l(X) ** 2))(layer)
  pruned = ~layer.mask()
  assert float(jnp.mean(grads.kernel[...][pruned] != 0)) > 0.9


def test_mask_and_with_sparsity():
  layer = SparseBitLinear(32, 16, rngs=nnx.Rngs(0))
  assert layer.mask() is None
  layer.with_sparsity(6, 8)
  np.testing.assert_array_equal(layer.mask(), nm_mask(layer.kernel[...], 6, 8))
  with pytest.raises(ValueError, match="axis 0 has size 32, which is not divisible by m=5"):
    layer.with_sparsity(2, 5)


def test_bad_construction():
  with pytest.raises(ValueError, match=r"shape \(30, 16\).*not divisible by m=8"):
    SparseBitLinear(30, 16, n=6, m=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="act_bits=2"):
    SparseBitLinear(32, 16, act_bits=2, rngs=nnx.Rngs(0))


def test_dot_general_drop_in_nnx_linear():
  dg = sparse_ternary_dot_general(6, 8)
  linear = nnx.Linear(32, 16, use_bias=False, dot_general=dg, rngs=nnx.Rngs(1))
  np.testing.assert_allclose(linear(X), bitlinear(X, linear.kernel[...], 6, 8), rtol=1e-6)
  g = nnx.grad(lambda l: jnp.sum(l(X)))(linear)
  assert g.kernel[...].shape == (32, 16)


def test_dot_general_drop_in_linen_dense():
  dense = linen.Dense(16, use_bias=False, dot_general=sparse_ternary_dot_general(2, 4))
  params = dense.init(jax.random.key(2), X)
  kernel = params["params"]["kernel"]
  np.testing.assert_allclose(dense.apply(params, X), bitlinear(X, kernel, 2, 4), rtol=1e-6)


def test_rmsnorm():
  norm = RMSNorm(32)
  xb = X.astype(jnp.bfloat16)
  x32 = X.astype(jnp.float32)
  expected = x32 / np.sqrt(np.mean(np.asarray(x32) ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(norm(X), expected, rtol=1e-5)
  assert norm(xb).dtype == jnp.bfloat16


def test_linear_prologue_is_the_op_applied_first():
  """`linear(x, prologue)` applies the prologue (the norm's or SwiGLU's, float32 math) first; a
  quantizing layer quantizes its float32 result, as the packed layer does (no rounding to x's
  dtype in between: the int8 codes differ at a few % of values otherwise), then multiplies in
  x's dtype; a full-precision layer is `linear(prologue(x))`. SwiGLU takes [gate | up] and
  refuses odd widths."""
  layer = SparseBitLinear(32, 16, n=6, m=8, rngs=nnx.Rngs(0))
  w = layer.effective_weight().astype(jnp.bfloat16)
  norm = RMSNorm(32)
  norm.scale[...] = jnp.linspace(0.5, 1.5, 32)
  xb = (X * 3).astype(jnp.bfloat16)
  pro = norm.prologue()
  expected = quantize_activations(pro(xb, jnp.float32)).astype(jnp.bfloat16) @ w
  np.testing.assert_array_equal(layer(xb, pro), expected)
  assert (absmax_int8(pro(xb, jnp.float32))[0] != absmax_int8(pro(xb))[0]).any()
  full = SparseBitLinear(32, 16, n=6, m=8, quant="none", rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(full(xb, pro), full(norm(xb)))
  gate_up = jax.random.normal(jax.random.key(3), (2, 3, 64)).astype(jnp.bfloat16)
  g, u = np.asarray(gate_up[..., :32], np.float32), np.asarray(gate_up[..., 32:], np.float32)
  expected = (g / (1 + np.exp(-g)) * u).astype(jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(swiglu(gate_up), np.float32),
                             np.asarray(expected, np.float32), rtol=1e-2)
  expected = quantize_activations(swiglu(gate_up, jnp.float32)).astype(jnp.bfloat16) @ w
  np.testing.assert_array_equal(layer(gate_up, SwiGLUPrologue()), expected)
  with pytest.raises(ValueError, match=r"\(2, 3, 32\); this layer \(32 -> 16\) with "
                                       r"SwiGLUPrologue needs its last axis to be 64"):
    layer(gate_up[..., :32], SwiGLUPrologue())
  with pytest.raises(ValueError, match=r"needs its last axis to be 32"):
    layer(gate_up)
  with pytest.raises(ValueError, match=r"SwiGLU takes x \[..., 2K\].*\(2, 3, 63\), whose last"):
    swiglu(gate_up[..., :63])
