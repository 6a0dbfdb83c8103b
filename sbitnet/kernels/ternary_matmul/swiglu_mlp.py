"""`ternary_swiglu_mlp`: a SwiGLU block of two packed ternary weights with int8 activations,
`down(swiglu(prologue(x) @ gate_up))`, fused across the two projections where that measured
faster."""

from __future__ import annotations

import math

import jax

from sbitnet.kernels.ternary_matmul import config as config_lib
from sbitnet.kernels.ternary_matmul import gemv_dp4a
from sbitnet.kernels.ternary_matmul.api import (PALLAS_FLOAT_DTYPES, _check_inputs, _pad_to,
                                               _round_up, _rows, off_gpu, ternary_matmul)
from sbitnet.kernels.ternary_matmul.pack import PackedTernary
from sbitnet.kernels.ternary_matmul.quantize_rows import quantize_rows
from sbitnet.ops import RMSNormPrologue, SwiGLUPrologue


def _check_block(gate_up: PackedTernary, down: PackedTernary) -> None:
  (_, two_f), (f, _) = gate_up.shape, down.shape
  if two_f != 2 * f:
    raise ValueError(f"gate_up must have 2F outputs (gate, then up) for a down projection of F = "
                     f"{f} inputs, got gate_up {list(gate_up.shape)} and down "
                     f"{list(down.shape)} ([in, out]).")


def ternary_swiglu_mlp(x: jax.Array, gate_up: PackedTernary, down: PackedTernary, *,
                       prologue: RMSNormPrologue | None = None,
                       implementation: str | None = None,
                       gate_up_int8: jax.Array | None = None,
                       down_int8: jax.Array | None = None,
                       configs: tuple[gemv_dp4a.GemvConfig, gemv_dp4a.GemvConfig] | None = None
                       ) -> jax.Array:
  """`y = Q(swiglu(Q(prologue(x)) @ W_gu)) @ W_down` with Q the per-token int8 activation
  quantization (`ternary_matmul(quantize_x=True)` on both).

  Args:
    x: float `[..., K]` (bfloat16 or float16 for the kernels).
    gate_up: packed `[K, 2F]`, the gate's F columns then the up projection's.
    down: packed `[F, N]`.
    prologue: an `RMSNormPrologue` applied to x first (the block's pre-norm), or None.
    implementation: as `ternary_matmul`'s.
    gate_up_int8, down_int8: `unpack_int8` of the weights, if kept (`ternary_matmul`'s
      `int8_weight`).
    configs: the gated GEMV pair's tiles (tuning and tests; default `config.choose_gated_gemv`):
      given, the pair runs at any number of rows.

  Returns `[..., N]` in x's dtype: the value of
  `ternary_matmul(ternary_matmul(x, gate_up, quantize_x=True, prologue=prologue), down,
  quantize_x=True, prologue=SwiGLUPrologue())`. Pallas at one row
  (`config.gated_gemv_serves`) computes it as the gated GEMV pair: x quantized (with the norm)
  by `quantize_rows`, the gate/up GEMV with the gating in its epilogue, which also writes each
  program's absmax of h, then the down GEMV quantizing h itself with the scale from those parts.
  That is two kernels instead of four (no XLA gating, no `quantize_rows` of h) with the same
  float32 math, so the same int8 activations; elsewhere it is the two calls.
  """
  if prologue is not None and not isinstance(prologue, RMSNormPrologue):
    raise ValueError(f"the SwiGLU block's prologue is its pre-norm, an RMSNormPrologue or None; "
                     f"got {type(prologue).__name__} (the gating is the block's own).")
  _check_inputs(x, gate_up, implementation, prologue)
  _check_block(gate_up, down)
  lead, k, (f, n) = x.shape[:-1], gate_up.in_features, down.shape
  m = math.prod(lead)
  pallas = implementation == "pallas" or implementation is None and not off_gpu()
  if configs is not None and not (pallas and x.dtype in PALLAS_FLOAT_DTYPES):
    raise ValueError(f"configs={configs} select the gated GEMV pair: it needs "
                     f"implementation='pallas' (or None on a GPU) and bfloat16/float16 x, got "
                     f"implementation={implementation!r} and {x.dtype}.")
  if configs is None and not (pallas and config_lib.gated_gemv_serves(m)
                              and x.dtype in PALLAS_FLOAT_DTYPES):
    h = ternary_matmul(x, gate_up, quantize_x=True, implementation=implementation,
                       int8_weight=gate_up_int8, prologue=prologue)
    return ternary_matmul(h, down, quantize_x=True, implementation=implementation,
                          int8_weight=down_int8, prologue=SwiGLUPrologue())
  gate_config, down_config = configs or config_lib.choose_gated_gemv(m, f, k)
  interpret = off_gpu()
  x2 = x.reshape(m, k)
  xq, row_scale, row_sum = quantize_rows(x2, None if prologue is None else _rows(prologue, m),
                                         rows=m, plane_order=False, interpret=interpret)
  h, amax = gemv_dp4a.gated(xq, row_scale, row_sum, gate_up.codes, gate_up.scale,
                            config=gate_config, out_dtype=x.dtype, interpret=interpret)
  n16 = _round_up(n, 16)
  y = gemv_dp4a.matmul_from_parts(h, amax, _pad_to(down.codes, 0, n16, 0x55),
                                  _pad_to(down.scale, 0, n16), config=down_config,
                                  out_dtype=x.dtype, interpret=interpret)
  return y[:, :n].astype(x.dtype).reshape(*lead, n)
