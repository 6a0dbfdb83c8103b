"""RMSNorm computed in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
  """`y = x / sqrt(mean(x², axis=-1) + eps) * scale`, computed in float32, returned in `x.dtype`."""

  def __init__(self, features: int, *, eps: float = 1e-6, param_dtype: jnp.dtype = jnp.float32,
               scale_axes: tuple[str | None] = ("norm",)):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((features,), param_dtype), out_sharding=scale_axes,
                           eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)
