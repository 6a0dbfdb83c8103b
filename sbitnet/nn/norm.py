"""RMSNorm computed in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sbitnet.ops import RMSNormPrologue, rms_norm


class RMSNorm(nnx.Module):
  """`y = x / sqrt(mean(x², axis=-1) + eps) * scale`, computed in float32, returned in `x.dtype`."""

  def __init__(self, features: int, *, eps: float = 1e-6, param_dtype: jnp.dtype = jnp.float32,
               scale_axes: tuple[str | None] = ("norm",)):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((features,), param_dtype), out_sharding=scale_axes,
                           eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale[...], self.eps)

  def prologue(self, residual: jax.Array | None = None) -> RMSNormPrologue:
    """This norm as the prologue of the linear layer it feeds: `linear(x, prologue=...)` computes
    `linear(norm(x + residual))` (the packed model fuses it into its activation quantization)."""
    return RMSNormPrologue(self.scale[...], self.eps, residual)
