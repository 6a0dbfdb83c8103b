"""SparseBitLinear: one NNX layer for Dense BF16, Sparse BF16, Dense BitNet and Sparse BitNet."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sbitnet.ops import WeightSpec, absmean_ternary, apply_weight_spec, nm_mask
from sbitnet.ops.sparse_ternary import spec_dot_general
from sbitnet.ops.validation import check_act_bits

default_kernel_init = nnx.initializers.normal(0.02)


class SparseBitLinear(nnx.Module):
  """`y = Q_act(x) @ W_eff (+ b)` with a latent kernel `[in, out]` (master dtype `param_dtype`).

  The arm is chosen by arguments: `quant="none", n=m=None` is Dense BF16; `quant="none", n, m` is
  Sparse BF16; `quant="ternary", n=m=None` is Dense BitNet; `quant="ternary", n, m` is Sparse
  BitNet. `grad`, `mask_from`, `order`, `sr_ste` select the ablations (see `sbitnet.ops.WeightSpec`).
  The N:M groups run along the input axis. `split` gives one gamma per fused output. The matmul
  runs in `dtype` (default: the input's dtype); mask and gamma come from the latent kernel.
  """

  def __init__(self, in_features: int, out_features: int, *, n: int | None = None,
               m: int | None = None, quant: str = "ternary", grad: str = "dense",
               mask_from: str = "latent", order: str = "quant_then_mask",
               split: Sequence[int] | None = None, sr_ste: float = 0.0, act_bits: int | None = 8,
               use_bias: bool = False, dtype: jnp.dtype | None = None,
               param_dtype: jnp.dtype = jnp.float32,
               kernel_init: nnx.Initializer = default_kernel_init,
               kernel_axes: tuple[str | None, str | None] = ("embed", "mlp"),
               rngs: nnx.Rngs):
    self.spec = WeightSpec(n, m, 0, quant, grad, mask_from, order,
                           None if split is None else tuple(split), sr_ste)
    self.spec.check_weight(jax.ShapeDtypeStruct((in_features, out_features), param_dtype))
    if act_bits is not None:
      check_act_bits(act_bits)
    self.in_features, self.out_features = in_features, out_features
    self.act_bits = act_bits
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype),
                            out_sharding=kernel_axes, eager_sharding=False)
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype), out_sharding=kernel_axes[1:],
                           eager_sharding=False) if use_bias else None)

  def effective_weight(self) -> jax.Array:
    """`W_eff` `[in, out]` in the kernel's dtype, with the layer's straight-through gradient."""
    return apply_weight_spec(self.kernel[...], self.spec)

  def mask(self) -> jax.Array | None:
    """The current N:M keep-mask of the latent kernel (no gradient), or None when dense."""
    if not self.spec.sparse:
      return None
    source = jax.lax.stop_gradient(self.kernel[...])
    if self.spec.mask_from == "quantized":
      source = absmean_ternary(source, self.spec.split)[0]
    return nm_mask(source, self.spec.n, self.spec.m, 0)

  def with_sparsity(self, n: int | None, m: int | None) -> None:
    """Switches the layer's N:M pattern in place (dense-to-sparse training)."""
    self.spec = dataclasses.replace(self.spec, n=n, m=m)
    self.spec.check_weight(self.kernel[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: `[..., in]` -> `[..., out]` in `dtype` (or the dtype of `x`)."""
    if self.dtype is not None:
      x = x.astype(self.dtype)
    dot_general = spec_dot_general(self.spec, self.act_bits)
    y = dot_general(x, self.kernel[...], (((x.ndim - 1,), (0,)), ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y
