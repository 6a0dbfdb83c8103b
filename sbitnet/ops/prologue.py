"""Row-wise ops a linear layer can apply to its input before quantizing it: `y = Q_act(f(x)) @ W`.

A layer that gets one as `prologue=` computes `f(x)` itself, so that on the GPU the packed model's
kernels can fuse it into the per-token activation quantization (one kernel per call instead of
the op's own kernels plus the quantization). The math is the same on every path:

- `RMSNormPrologue(scale, eps)`: `rms_norm`, x `[..., K]` -> `[..., K]`;
- `SwiGLUPrologue()`: `swiglu`, x `[..., 2K]` (gate, then up) -> `[..., K]`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """`x / sqrt(mean(x², axis=-1) + eps) * scale` for x `[..., K]`, scale `[K]`: computed in
  float32 (the mean as a sum divided by K), returned in `x.dtype`."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def swiglu(x: jax.Array) -> jax.Array:
  """`silu(gate) * up` for x `[..., 2K]` = `[gate | up]`, computed in float32 and returned in
  `x.dtype` `[..., K]` (silu(g) = g · sigmoid(g))."""
  width = x.shape[-1]
  if width % 2:
    raise ValueError(f"swiglu takes [..., 2K] (gate, then up), got a last axis of {width}.")
  gate, up = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return (jax.nn.silu(gate) * up).astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RMSNormPrologue:
  """`rms_norm(x, scale, eps)` as a linear layer's prologue; scale float `[K]`."""
  scale: jax.Array
  eps: float = dataclasses.field(metadata={"static": True})

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.scale, self.eps)

  def input_width(self, in_features: int) -> int:
    """The width of x that gives a layer of `in_features` inputs."""
    return in_features


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SwiGLUPrologue:
  """`swiglu(x)` as a linear layer's prologue: the layer takes `[gate | up]`, twice its width."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return swiglu(x)

  def input_width(self, in_features: int) -> int:
    return 2 * in_features


Prologue = RMSNormPrologue | SwiGLUPrologue
