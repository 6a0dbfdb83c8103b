"""SparseBitLinear: one NNX layer for Dense BF16, Sparse BF16, Dense BitNet and Sparse BitNet."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sbitnet.ops import (Prologue, WeightSpec, absmean_ternary, apply_weight_spec, nm_mask,
                         quantize_activations)
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
    """`W_eff` shaped like the kernel (`[in, out]`, or `[layers, in, out]` when stacked by
    `nnx.vmap`) in the kernel's dtype, with the layer's straight-through gradient."""
    return _per_matrix(apply_weight_spec, self.spec, self.kernel[...])

  def mask(self) -> jax.Array | None:
    """The current N:M keep-mask of the latent kernel (no gradient), or None when dense.

    Shaped like the kernel: `[in, out]`, or `[layers, in, out]` for layers stacked by `nnx.vmap`.
    """
    if not self.spec.sparse:
      return None
    return _per_matrix(_mask, self.spec, jax.lax.stop_gradient(self.kernel[...]))

  def with_sparsity(self, n: int | None, m: int | None) -> None:
    """Switches the layer's N:M pattern in place (dense-to-sparse training)."""
    spec = dataclasses.replace(self.spec, n=n, m=m)
    spec.check_weight(jax.ShapeDtypeStruct((self.in_features, self.out_features), jnp.float32))
    self.spec = spec

  def __call__(self, x: jax.Array, prologue: Prologue | None = None) -> jax.Array:
    """x: `[..., in]` -> `[..., out]` in `dtype` (or the dtype of `x`); with a `prologue`, x is
    its input (`[..., prologue.input_width(in)]`) and the layer computes `self(prologue(x))`,
    except that a quantizing layer quantizes the prologue's float32 result (as `PackedLinear`
    and `ternary_matmul` do) rather than its value rounded to x's dtype."""
    width = self.in_features if prologue is None else prologue.input_width(self.in_features)
    if x.shape[-1:] != (width,):
      given = "" if prologue is None else f" with {type(prologue).__name__}"
      raise ValueError(f"x has shape {tuple(x.shape)}; this layer ({self.in_features} -> "
                       f"{self.out_features}){given} needs its last axis to be {width}.")
    dtype = x.dtype if self.dtype is None else self.dtype
    act_bits = self.act_bits
    if prologue is not None:
      if self.spec.quant == "ternary" and act_bits is not None:
        # Quantized from the prologue's float32 result, as the packed layer does
        # (`sbitnet.ops.prologue`), so the int8 codes do not depend on the compute dtype.
        x = quantize_activations(prologue(x, jnp.float32), act_bits)
        act_bits = None
      else:
        x = prologue(x)
    x = x.astype(dtype)
    dot_general = spec_dot_general(self.spec, act_bits)
    y = dot_general(x, self.kernel[...], (((x.ndim - 1,), (0,)), ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


def _mask(kernel: jax.Array, spec: WeightSpec) -> jax.Array:
  if spec.mask_from == "quantized":
    kernel = absmean_ternary(kernel, spec.split)[0]
  return nm_mask(kernel, spec.n, spec.m, 0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _per_matrix(fn, spec: WeightSpec, kernel: jax.Array) -> jax.Array:
  """`fn(w, spec)` of each trailing `[in, out]` matrix w of `kernel`, as one jitted computation:
  called outside jit (export, checkpoint conversion) it runs fused by XLA rather than op by op,
  where a stacked 3B model's N:M ranking alone materialized 8 bytes per weight and did not fit an
  80 GB H100 beside the model."""
  per_matrix = lambda w: fn(w, spec)
  for _ in range(kernel.ndim - 2):
    per_matrix = jax.vmap(per_matrix)
  return per_matrix(kernel)
