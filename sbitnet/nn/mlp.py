"""SwiGLU feed-forward block with a fused gate/up SparseBitLinear (one gamma each)."""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from sbitnet.nn.linear import SparseBitLinear
from sbitnet.ops import Prologue, SwiGLUPrologue


class SwiGLU(nnx.Module):
  """`down(silu(x W_gate) * (x W_up))`, x `[..., d_model]` -> `[..., d_model]`."""

  def __init__(self, d_model: int, d_ff: int, *, linear: Callable[..., SparseBitLinear],
               rngs: nnx.Rngs):
    self.d_ff = d_ff
    self.gate_up = linear(d_model, 2 * d_ff, split=(d_ff, d_ff), kernel_axes=("embed", "mlp"),
                          rngs=rngs)
    self.down = linear(d_ff, d_model, kernel_axes=("mlp", "embed"), rngs=rngs)

  def __call__(self, x: jax.Array, prologue: Prologue | None = None) -> jax.Array:
    """`prologue` (e.g. the pre-norm) is applied to x by the gate/up projection; the gating is the
    down projection's prologue, so the packed model fuses it into its activation quantization."""
    return self.down(self.gate_up(x, prologue), SwiGLUPrologue())
