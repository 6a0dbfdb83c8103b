"""Row-wise ops a linear layer can apply to its input before quantizing it: `y = Q_act(f(x)) @ W`.

A layer that gets one as `prologue=` computes `f(x)` itself, so that on the GPU the packed model's
kernels can fuse it into the per-token activation quantization (one kernel per call instead of
the op's own kernels plus the quantization). The math is float32 on every path, rounded once to
the output dtype; a quantizing caller takes the float32 result (`out_dtype=jnp.float32`), so no
rounding to x's dtype happens between the op and the quantization (XLA drops such a rounding
inside a fusion anyway, so keeping it would make the result depend on XLA's fusion decisions):

- `RMSNormPrologue(scale, eps, residual)`: `rms_norm`, x `[..., K]` -> `[..., K]`, with the
  residual stream added first when given (a pre-norm after a residual add);
- `SwiGLUPrologue()`: `swiglu`, x `[..., 2K]` (gate, then up) -> `[..., K]`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def check_rms_norm(x_shape: tuple[int, ...], scale: jax.Array,
                   residual: jax.Array | None) -> None:
  """Trace-time check of `rms_norm`'s inputs: scale `[K]`, the residual shaped like x."""
  if scale.shape != tuple(x_shape[-1:]):
    raise ValueError(f"the RMS norm's scale has shape {tuple(scale.shape)}; x {tuple(x_shape)} "
                     f"needs [{x_shape[-1]}].")
  if residual is not None and residual.shape != tuple(x_shape):
    raise ValueError(f"the residual has shape {tuple(residual.shape)}; x {tuple(x_shape)} needs "
                     "the same.")


def check_swiglu(x_shape: tuple[int, ...]) -> None:
  """Trace-time check of `swiglu`'s input: an even last axis, `[..., 2K]` (gate, then up)."""
  if not x_shape or x_shape[-1] % 2:
    raise ValueError(f"SwiGLU takes x [..., 2K] (gate, then up); x has shape {tuple(x_shape)}, "
                     "whose last axis is not even.")


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, residual: jax.Array | None = None,
             out_dtype=None) -> jax.Array:
  """`v / sqrt(mean(v², axis=-1) + eps) * scale` with `v = x (+ residual)` for x (and residual)
  `[..., K]`, scale `[K]`: computed in float32, returned in `out_dtype` (default x's dtype)."""
  check_rms_norm(x.shape, scale, residual)
  v = x.astype(jnp.float32)
  if residual is not None:
    v = v + residual.astype(jnp.float32)
  y = v * jax.lax.rsqrt(jnp.mean(v * v, axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(out_dtype or x.dtype)


def swiglu(x: jax.Array, out_dtype=None) -> jax.Array:
  """`silu(gate) * up` for x `[..., 2K]` = `[gate | up]`, computed in float32 and returned in
  `out_dtype` (default x's dtype) `[..., K]` (silu(g) = g · sigmoid(g))."""
  check_swiglu(x.shape)
  gate, up = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return (jax.nn.silu(gate) * up).astype(out_dtype or x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RMSNormPrologue:
  """`rms_norm(x, scale, eps, residual)` as a linear layer's prologue; scale float `[K]`;
  residual, if given, shaped like x (the layer normalizes `x + residual`)."""
  scale: jax.Array
  eps: float = dataclasses.field(metadata={"static": True})
  residual: jax.Array | None = None

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    return rms_norm(x, self.scale, self.eps, self.residual, out_dtype)

  def input_width(self, in_features: int) -> int:
    """The width of x that gives a layer of `in_features` inputs."""
    return in_features


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SwiGLUPrologue:
  """`swiglu(x)` as a linear layer's prologue: the layer takes `[gate | up]`, twice its width."""

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    return swiglu(x, out_dtype)

  def input_width(self, in_features: int) -> int:
    return 2 * in_features


Prologue = RMSNormPrologue | SwiGLUPrologue
