"""PackedLinear: the inference-only linear layer over a packed 2-bit ternary weight."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sbitnet.kernels import PackedTernary, pack, ternary_matmul, unpack_int8
from sbitnet.ops import Prologue, quantize_activations


class PackedLinear(nnx.Module):
  """`y = Q_act(x) @ (t * gamma) (+ b)`, the ternary weight held as `sbitnet.kernels` packed codes.

  Takes the arguments the model passes to `SparseBitLinear` (shapes, `split`, `use_bias`,
  `kernel_axes`, `rngs`), so `DecoderLM(..., linear=...)` builds the same module tree with this
  layer in place; the weights are zero until loaded. Activations are quantized per token as in
  training: `act_bits=8` runs `ternary_matmul(quantize_x=True)` (int8 x ternary, exact int32
  accumulation), 4 fake-quantizes then multiplies in `dtype`, None multiplies unquantized.

  Parameters: `codes` uint8 `[out, Kp / 4]` and `scale` float32 `[out]` (a `PackedTernary`, format
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
    self.codes = nnx.Param(zero.codes, out_sharding=(kernel_axes[1], None), eager_sharding=False)
    self.scale = nnx.Param(zero.scale, out_sharding=kernel_axes[1:], eager_sharding=False)
    self.bias = (nnx.Param(jnp.zeros((out_features,), jnp.float32), out_sharding=kernel_axes[1:],
                           eager_sharding=False) if use_bias else None)
    self.weight_int8 = nnx.data(None)

  def materialize_int8(self) -> None:
    """Keeps the ternary weight unpacked, int8 `[out, in]` (`sbitnet.kernels.unpack_int8`), beside
    the codes and passes it to `ternary_matmul`: calls it sends to an int8 GEMM (on GPU, more
    than 64 rows, or 128 on Hopper: prefill, large-batch decode; without it the 2-bit kernel
    serves up to 512 rows)
    skip unpacking the codes each time; smaller calls still stream the 2-bit codes. Costs 8 more
    bits per weight of memory. Works on a stacked (`[layers, ...]`) layer too."""
    def unpacked(codes, scale):
      return unpack_int8(PackedTernary(codes, scale, in_features=self.in_features))
    for _ in range(self.codes[...].ndim - 2):
      unpacked = jax.vmap(unpacked)
    self.weight_int8 = nnx.Cache(jax.jit(unpacked)(self.codes[...], self.scale[...]))

  def packed(self) -> PackedTernary:
    """The weight as a `PackedTernary` (logical `[in, out]`)."""
    return PackedTernary(self.codes[...], self.scale[...], in_features=self.in_features,
                         split=self.split)

  def __call__(self, x: jax.Array, prologue: Prologue | None = None) -> jax.Array:
    """x: `[..., in]` -> `[..., out]` in `dtype` (or the dtype of `x`); with a `prologue`, x is
    its input (`[..., prologue.input_width(in)]`) and the layer computes `self(prologue(x))`,
    which with 8-bit activations `ternary_matmul` fuses into their quantization where it can."""
    if self.dtype is not None:
      x = x.astype(self.dtype)
    if prologue is not None and self.act_bits != 8:
      x, prologue = prologue(x), None
    if self.act_bits not in (None, 8):
      x = quantize_activations(x, self.act_bits)
    y = ternary_matmul(x, self.packed(), quantize_x=self.act_bits == 8, prologue=prologue,
                       implementation=self.implementation,
                       int8_weight=None if self.weight_int8 is None else self.weight_int8[...])
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y
