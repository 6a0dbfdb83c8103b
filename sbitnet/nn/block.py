"""Pre-norm decoder block: `h = x + attn(norm(x))`, then `h + mlp(norm(h))`.

The norms are passed to the linear layers as prologues (`sbitnet.ops.prologue`), the MLP's with
the residual stream, so that `h` is never materialised on its own: the packed model computes
`norm(x + attn)` inside its activation quantization and XLA sums `x + attn + mlp` in one pass.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from sbitnet.nn.attention import Attention
from sbitnet.nn.kv_cache import KVCache
from sbitnet.nn.linear import SparseBitLinear
from sbitnet.nn.mlp import SwiGLU
from sbitnet.nn.norm import RMSNorm


class DecoderBlock(nnx.Module):

  def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, d_ff: int, *,
               linear: Callable[..., SparseBitLinear], qkv_bias: bool, norm_eps: float,
               attention: str | None = None, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(d_model, eps=norm_eps)
    self.attn = Attention(d_model, n_heads, n_kv_heads, head_dim, linear=linear,
                          qkv_bias=qkv_bias, implementation=attention, rngs=rngs)
    self.mlp_norm = RMSNorm(d_model, eps=norm_eps)
    self.mlp = SwiGLU(d_model, d_ff, linear=linear, rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x `[B, T, d_model]` -> same shape and dtype."""
    attn = self.attn(x, cos, sin, self.attn_norm.prologue())
    return x + attn + self.mlp(attn, self.mlp_norm.prologue(residual=x))

  def with_cache(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 cache: KVCache) -> tuple[jax.Array, KVCache]:
    """`__call__` that also stores this layer's keys and values (see `Attention.with_cache`)."""
    attn, cache = self.attn.with_cache(x, cos, sin, cache, self.attn_norm.prologue())
    return x + attn + self.mlp(attn, self.mlp_norm.prologue(residual=x)), cache
