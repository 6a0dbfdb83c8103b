"""The effective Sparse-BitNet weight (every arm and ablation) with its straight-through gradient,
and the matmuls built on it: `bitlinear` and a `dot_general` drop-in for Flax layers."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from sbitnet.ops.nm_mask import nm_mask
from sbitnet.ops.quantizers import (absmean_scale, fake_ternary, quantize_activations,
                                    ternary_codes)
from sbitnet.ops.validation import (GRAD_MODES, MASK_SOURCES, ORDERS, QUANT_MODES, check_act_bits,
                                    check_choice,
                                    check_float, check_pattern, check_split, normalize_axis)


@dataclasses.dataclass(frozen=True)
class WeightSpec:
  """How a latent weight becomes its effective weight. Hashable; static under `jit`.

  n, m: N:M pattern along `axis` (both None: dense).
  quant: "ternary" (absmean 1.58-bit) or "none" (full precision).
  grad: "dense" (dual STE: every latent weight gets dL/dW_eff) or "masked" (only kept weights).
  mask_from: "latent" (|W|) or "quantized" (|Q(W)|, an ablation; ties go to the lower index).
  order: "quant_then_mask" (gamma from the dense W) or "mask_then_quant" (gamma from mask ⊙ W).
  split: sizes of fused outputs along the last axis, one gamma each.
  sr_ste: SR-STE decay λ: the gradient gains λ·(1 − mask)⊙W (Zhou et al. 2021); 0 disables.
  axis_name: mesh axes to average gamma over when called inside `shard_map` on a weight shard
    (with `split`: axes that shard the contraction axis only, see `absmean_scale`).

  The effective weight has a custom VJP (the straight-through gradient), so it supports reverse
  mode (grad, vjp, forward-over-reverse) but not forward mode with respect to the weight
  (`jax.jvp` / `jacfwd` raise).
  """
  n: int | None = None
  m: int | None = None
  axis: int = 0
  quant: str = "ternary"
  grad: str = "dense"
  mask_from: str = "latent"
  order: str = "quant_then_mask"
  split: tuple[int, ...] | None = None
  sr_ste: float = 0.0
  axis_name: str | tuple[str, ...] | None = None

  def __post_init__(self):
    check_pattern(self.n, self.m)
    check_choice("quant", self.quant, QUANT_MODES)
    check_choice("grad", self.grad, GRAD_MODES)
    check_choice("mask_from", self.mask_from, MASK_SOURCES)
    check_choice("order", self.order, ORDERS)
    if self.mask_from == "quantized" and (self.quant != "ternary" or self.order != "quant_then_mask"):
      raise ValueError("mask_from='quantized' needs quant='ternary' and order='quant_then_mask' "
                       f"(got quant={self.quant!r}, order={self.order!r}).")
    if self.sr_ste < 0:
      raise ValueError(f"sr_ste={self.sr_ste} must be >= 0 (the paper-style default is 0; "
                       "SR-STE uses 2e-4).")
    if self.split is not None:
      object.__setattr__(self, "split", tuple(int(s) for s in self.split))
    if isinstance(self.axis_name, list):
      object.__setattr__(self, "axis_name", tuple(self.axis_name))

  @property
  def sparse(self) -> bool:
    return self.n is not None and self.n < self.m

  @property
  def identity(self) -> bool:
    return self.quant == "none" and not self.sparse

  def check_weight(self, w: jax.Array) -> int:
    """Validates `w` against the spec at trace time; returns the normalized group axis."""
    check_float("w", w)
    axis = normalize_axis(self.axis, w.ndim, w.shape)
    check_pattern(self.n, self.m, w.shape, axis)
    check_split(self.split, w.shape)
    return axis


def _effective_and_mask(w: jax.Array, spec: WeightSpec) -> tuple[jax.Array, jax.Array | None]:
  gamma_of = functools.partial(absmean_scale, split=spec.split, axis_name=spec.axis_name)
  if not spec.sparse:
    return fake_ternary(w, gamma_of(w), spec.split), None
  if spec.quant == "none":
    mask = nm_mask(w, spec.n, spec.m, spec.axis)
    return jnp.where(mask, w, jnp.zeros_like(w)), mask
  if spec.order == "mask_then_quant":
    mask = nm_mask(w, spec.n, spec.m, spec.axis)
    masked = jnp.where(mask, w, jnp.zeros_like(w))
    return fake_ternary(masked, gamma_of(masked), spec.split), mask
  gamma = gamma_of(w)
  source = w if spec.mask_from == "latent" else ternary_codes(w, gamma, spec.split)
  mask = nm_mask(source, spec.n, spec.m, spec.axis)
  return jnp.where(mask, fake_ternary(w, gamma, spec.split), jnp.zeros_like(w)), mask


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _effective_weight(w: jax.Array, spec: WeightSpec) -> jax.Array:
  return _effective_and_mask(w, spec)[0]


def _effective_weight_fwd(w, spec):
  w_eff, mask = _effective_and_mask(w, spec)
  keeps_mask = spec.sparse and (spec.grad == "masked" or spec.sr_ste > 0)
  return w_eff, (mask if keeps_mask else None, w if spec.sparse and spec.sr_ste > 0 else None)


def _effective_weight_bwd(spec, residuals, g):
  mask, w = residuals
  if mask is not None and spec.grad == "masked":
    g = jnp.where(mask, g, jnp.zeros_like(g))
  if w is not None:
    g = g + (spec.sr_ste * jnp.where(mask, jnp.zeros_like(w), w)).astype(g.dtype)
  return (g,)


_effective_weight.defvjp(_effective_weight_fwd, _effective_weight_bwd)


def sparse_ternary_weight(w: jax.Array, n: int | None = None, m: int | None = None, *,
                          axis: int = 0, quant: str = "ternary", grad: str = "dense",
                          mask_from: str = "latent", order: str = "quant_then_mask",
                          split: Sequence[int] | None = None, sr_ste: float = 0.0,
                          axis_name: str | tuple[str, ...] | None = None) -> jax.Array:
  """The effective weight `W_eff` of a Sparse-BitNet linear layer, same shape and dtype as `w`.

  Default (Sparse BitNet): `W_eff = mask ⊙ γ·clip(round(W/γ), -1, 1)` with `γ = mean|W|` of the
  dense latent `W` and `mask = nm_mask(W, n, m, axis)`, recomputed on every call. Gradient (dual
  STE): `dL/dW = dL/dW_eff` for every entry, pruned or not. See `WeightSpec` for the options:
  `quant="none"` is the sparse full-precision arm, `n=m=None` is dense, and `grad="masked"`,
  `mask_from="quantized"`, `order="mask_then_quant"` are the paper's ablations.
  """
  spec = WeightSpec(n, m, axis, quant, grad, mask_from, order,
                    None if split is None else tuple(split), sr_ste, axis_name)
  return apply_weight_spec(w, spec)


def apply_weight_spec(w: jax.Array, spec: WeightSpec) -> jax.Array:
  """`sparse_ternary_weight` for a prepared `WeightSpec`."""
  axis = spec.check_weight(w)
  if spec.identity:
    return w
  return _effective_weight(w, dataclasses.replace(spec, axis=axis))


DotGeneral = Callable[..., jax.Array]


def sparse_ternary_dot_general(n: int | None = None, m: int | None = None, *,
                               act_bits: int | None = 8, **weight_options) -> DotGeneral:
  """A `lax.dot_general` replacement for `flax.nnx.Linear(dot_general=...)` / `linen.Dense`.

  The right operand is the latent kernel; its single contracting dimension is the N:M group axis.
  With `quant="ternary"` the left operand is fake-quantized per token along its contracting
  dimension (`act_bits` 8 or 4; None disables). The matmul runs in the left operand's dtype.
  `weight_options` are those of `sparse_ternary_weight` except `axis`.
  """
  if "axis" in weight_options:
    raise ValueError("sparse_ternary_dot_general takes the group axis from the kernel's "
                     "contracting dimension; do not pass axis=.")
  return spec_dot_general(WeightSpec(n, m, **weight_options), act_bits)


def spec_dot_general(spec: WeightSpec, act_bits: int | None = 8) -> DotGeneral:
  """`sparse_ternary_dot_general` for a prepared `WeightSpec` (its `axis` is ignored)."""
  quantize_inputs = spec.quant == "ternary" and act_bits is not None
  if act_bits is not None:
    check_act_bits(act_bits)

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                  out_sharding=None):
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if len(rhs_contract) != 1 or len(lhs_contract) != 1 or lhs_batch or rhs_batch:
      raise ValueError("sparse_ternary_dot_general supports one contracting dimension and no batch "
                       f"dimensions; got dimension_numbers={dimension_numbers}.")
    if lhs.shape[lhs_contract[0]] != rhs.shape[rhs_contract[0]]:
      raise ValueError(f"x has shape {tuple(lhs.shape)} and the kernel {tuple(rhs.shape)}: x's "
                       f"contracting axis ({lhs.shape[lhs_contract[0]]}) must match the "
                       f"kernel's ({rhs.shape[rhs_contract[0]]} inputs).")
    w_eff = apply_weight_spec(rhs, dataclasses.replace(spec, axis=rhs_contract[0]))
    x = quantize_activations(lhs, act_bits, axis=lhs_contract[0]) if quantize_inputs else lhs
    extra = {} if out_sharding is None else {"out_sharding": out_sharding}
    return jax.lax.dot_general(x, w_eff.astype(x.dtype), dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **extra)

  return dot_general


def bitlinear(x: jax.Array, w: jax.Array, n: int | None = None, m: int | None = None, *,
              act_bits: int | None = 8, precision=None, **weight_options) -> jax.Array:
  """`y = Q_act(x) @ W_eff`: activation quant + effective weight + matmul in one call.

  x: `[..., in]`; w: latent kernel `[in, out]`; returns `[..., out]` in the dtype of `x`.
  """
  dot_general = sparse_ternary_dot_general(n, m, act_bits=act_bits, **weight_options)
  return dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)
