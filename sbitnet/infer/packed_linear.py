"""PackedLinear: the inference-only linear layer over a packed 2-bit ternary weight."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sbitnet.kernels import PackedTernary, pack, ternary_matmul
from sbitnet.kernels.ternary_matmul.config import DECODE_MAX_M
from sbitnet.kernels.ternary_matmul.pack import unpack_codes
from sbitnet.ops import absmax_int8, quantize_activations


class PackedLinear(nnx.Module):
  """`y = Q_act(x) @ (t * gamma) (+ b)`, the ternary weight held as `sbitnet.kernels` packed codes.

  Takes the arguments the model passes to `SparseBitLinear` (shapes, `split`, `use_bias`,
  `kernel_axes`, `rngs`), so `DecoderLM(..., linear=...)` builds the same module tree with this
  layer in place; the weights are zero until loaded. Activations are quantized per token as in
  training: `act_bits=8` runs `ternary_matmul(quantize_x=True)` (int8 x ternary, exact int32
  accumulation), 4 fake-quantizes then multiplies in `dtype`, None multiplies unquantized.

  Parameters: `codes` uint8 `[Kp / 4, out]` and `scale` float32 `[out]` (a `PackedTernary`, format
  of `sbitnet.kernels`), `bias` `[out]` when `use_bias`. After `materialize_int8()`, also
  `weight_int8`, an `nnx.Cache` (derived, never saved) int8 `[out, in]`.
  """

  def __init__(self, in_features: int, out_features: int, *, split: Sequence[int] | None = None,
               use_bias: bool = False, act_bits: int | None = 8, dtype: jnp.dtype | None = None,
               implementation: str | None = None,
               kernel_axes: tuple[str | None, str | None] = ("embed", "mlp"), rngs: nnx.Rngs):
    del rngs
    self.in_features, self.out_features = in_features, out_features
    self.split = None if split is None else tuple(split)
    self.act_bits, self.dtype, self.implementation = act_bits, dtype, implementation
    gamma = jnp.ones(() if split is None else (len(split),), jnp.float32)
    zero = pack(jnp.zeros((in_features, out_features), jnp.int8), gamma, self.split)
    self.codes = nnx.Param(zero.codes, out_sharding=(None, kernel_axes[1]), eager_sharding=False)
    self.scale = nnx.Param(zero.scale, out_sharding=kernel_axes[1:], eager_sharding=False)
    self.bias = (nnx.Param(jnp.zeros((out_features,), jnp.float32), out_sharding=kernel_axes[1:],
                           eager_sharding=False) if use_bias else None)
    self.weight_int8 = nnx.data(None)

  def materialize_int8(self) -> None:
    """Keeps the ternary weight unpacked, int8 `[out, in]` (K-major, the operand layout of int8
    tensor-core GEMMs), beside the codes. Calls with more than `DECODE_MAX_M` rows and int8
    activations (prefill, large-batch decode) then run XLA's int8 GEMM on it instead of unpacking
    the codes on every call; smaller calls still stream the 2-bit codes. Costs 8 more bits per
    weight of memory. Works on a stacked (`[layers, ...]`) layer too."""
    def unpacked(codes):
      return unpack_codes(codes)[:self.in_features].T
    codes = self.codes[...]
    for _ in range(codes.ndim - 2):
      unpacked = jax.vmap(unpacked)
    self.weight_int8 = nnx.Cache(jax.jit(unpacked)(codes))

  def packed(self) -> PackedTernary:
    """The weight as a `PackedTernary` (logical `[in, out]`)."""
    return PackedTernary(self.codes[...], self.scale[...], in_features=self.in_features,
                         split=self.split)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: `[..., in]` -> `[..., out]` in `dtype` (or the dtype of `x`)."""
    if self.dtype is not None:
      x = x.astype(self.dtype)
    if self.act_bits not in (None, 8):
      x = quantize_activations(x, self.act_bits)
    rows = math.prod(x.shape[:-1])
    if self.weight_int8 is not None and self.act_bits == 8 and rows > DECODE_MAX_M:
      y = _int8_matmul(x, self.weight_int8[...], self.scale[...])
    else:
      y = ternary_matmul(x, self.packed(), quantize_x=self.act_bits == 8,
                         implementation=self.implementation)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


def _int8_matmul(x: jax.Array, weight_int8: jax.Array, scale: jax.Array) -> jax.Array:
  """`(absmax_int8(x) @ weight_int8.T) * s_x * scale` with exact int32 accumulation.

  x float `[..., in]`, weight_int8 int8 `[out, in]`, scale float32 `[out]` -> `[..., out]` in the
  dtype of `x`.
  """
  xq, x_scale = absmax_int8(x.reshape(-1, x.shape[-1]))
  acc = jax.lax.dot_general(xq, weight_int8, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.int32)
  y = acc.astype(jnp.float32) * x_scale * scale
  return y.astype(x.dtype).reshape(*x.shape[:-1], weight_int8.shape[0])
