"""`ternary_matmul`: activations × packed ternary weight, with a dispatcher over implementations."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from sbitnet.kernels.ternary_matmul import config as config_lib
from sbitnet.kernels.ternary_matmul import (gemv_dp4a, int8_gemm, int8_gemm_mgpu, pallas_triton,
                                           reference, two_bit_mgpu)
from sbitnet.kernels.ternary_matmul.pack import PackedTernary, check_packed
from sbitnet.kernels.ternary_matmul.quantize_rows import quantize_rows
from sbitnet.ops import Prologue, RMSNormPrologue, SwiGLUPrologue, absmax_int8

IMPLEMENTATIONS = ("xla", "pallas")
PALLAS_FLOAT_DTYPES = (jnp.bfloat16, jnp.float16)
INT8_GEMM_CONFIGS = (int8_gemm.GemmConfig, int8_gemm_mgpu.MgpuGemmConfig)
PROLOGUES = (RMSNormPrologue, SwiGLUPrologue)


def _check_inputs(x: jax.Array, p: PackedTernary, implementation: str | None,
                  prologue: Prologue | None) -> None:
  check_packed(p)
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r} is not valid; choose one of "
                     f"{IMPLEMENTATIONS} or None (pick by backend and shape).")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a floating-point array [..., in] (bfloat16 for the kernels), got "
                     f"{x.dtype} {tuple(x.shape)}; use quantize_x=True for int8 activations.")
  if prologue is not None and not isinstance(prologue, PROLOGUES):
    raise ValueError(f"prologue={prologue!r} is not valid; pass one of "
                     f"{[c.__name__ for c in PROLOGUES]} (sbitnet.ops) or None.")
  width = p.in_features if prologue is None else prologue.input_width(p.in_features)
  residual = getattr(prologue, "residual", None)
  if residual is not None and residual.shape != x.shape:
    raise ValueError(f"the prologue's residual has shape {tuple(residual.shape)}; it must be "
                     f"shaped like x {tuple(x.shape)}.")
  if x.ndim < 1 or x.shape[-1] != width:
    given = "" if prologue is None else f" with {type(prologue).__name__}"
    raise ValueError(f"x has shape {tuple(x.shape)} but the packed weight is {p.shape} "
                     f"([in, out]); x's last axis must be {width}{given}.")


def off_gpu() -> bool:
  """Whether the default backend is not a GPU: the dispatcher picks XLA, Pallas runs interpreted."""
  return jax.default_backend() != "gpu"


def on_hopper() -> bool:
  """Whether the default device is a Hopper GPU (sm_90: wgmma, the Mosaic GPU kernel's target)."""
  device = jax.devices()[0]
  capability = str(getattr(device, "compute_capability", ""))
  return device.platform == "gpu" and capability.startswith("9.")


def _pick(m: int, k: int, n: int, x_dtype, quantize_x: bool, int8_weight_kept: bool) -> str:
  """The measured faster implementation on GPU (docs/kernels.md): a 2-bit kernel where
  `config.two_bit_serves`; otherwise the Pallas int8 GEMM where it beat XLA's, XLA otherwise
  (bf16 activations included)."""
  if off_gpu():
    return "xla"
  if not quantize_x and x_dtype not in PALLAS_FLOAT_DTYPES:
    return "xla"
  if config_lib.two_bit_serves(m, n, k, quantize_x, int8_weight_kept, on_hopper()):
    return "pallas"
  return "pallas" if quantize_x and config_lib.int8_gemm_wins(m, n, k, on_hopper()) else "xla"


def _rows(prologue: Prologue, m: int) -> Prologue:
  """The prologue for x reshaped to `[m, K]` (its residual likewise)."""
  if isinstance(prologue, RMSNormPrologue) and prologue.residual is not None:
    return dataclasses.replace(prologue, residual=prologue.residual.reshape(m, -1))
  return prologue


def _round_up(size: int, multiple: int) -> int:
  return -(-size // multiple) * multiple


def _pad_to(a: jax.Array, axis: int, size: int, value=0) -> jax.Array:
  if a.shape[axis] == size:
    return a
  pads = [(0, 0)] * a.ndim
  pads[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, pads, constant_values=value)


def _part_dtype(config, out_dtype):
  """Split-K partial products are kept in float32 until summed."""
  return out_dtype if config.split_k == 1 else jnp.float32


def _product(parts: jax.Array, m: int, n: int) -> jax.Array:
  """`[split_k, Mp, Np]` partial products -> the `[m, n]` product (summed in float32 if split)."""
  return parts[0, :m, :n] if parts.shape[0] == 1 else parts.sum(0, dtype=jnp.float32)[:m, :n]


def _check_hopper(config) -> None:
  if not off_gpu() and not on_hopper():
    device = jax.devices()[0]
    raise ValueError(f"{config} selects a Mosaic GPU kernel, which needs a Hopper GPU (compute "
                     f"capability 9.x, wgmma); this device is {device.device_kind} "
                     f"({getattr(device, 'compute_capability', 'unknown')}). Pass a Triton "
                     "kernel's config or config=None.")


def _two_bit_mgpu(x: jax.Array, p: PackedTernary, config: two_bit_mgpu.TwoBitMgpuConfig,
                  out_dtype, out_init: jax.Array | None,
                  prologue: Prologue | None) -> jax.Array:
  """The Mosaic GPU 2-bit kernel on x (or `prologue(x)`) quantized per token to int8 (in the same
  pass as its reordering, `quantize_rows`), N padded to its CTA rows."""
  if out_init is not None:
    raise ValueError("out_init does not apply to the Mosaic GPU 2-bit kernel (its interpret "
                     "mode already fills the output with NaN, or int32 max for split-K sums, "
                     "before the kernel runs).")
  _check_hopper(config)
  n = p.codes.shape[0]
  np_ = _round_up(n, config.cta_n)
  y = two_bit_mgpu.matmul(x, _pad_to(p.codes, 0, np_, 0x55), _pad_to(p.scale, 0, np_),
                          prologue, config=config, out_dtype=out_dtype, interpret=off_gpu())
  return y[:, :n]


def _pallas(x: jax.Array, p: PackedTernary, quantize_x: bool, out_dtype,
            config: (pallas_triton.Config | gemv_dp4a.GemvConfig | two_bit_mgpu.TwoBitMgpuConfig
                     | None),
            out_init: jax.Array | None, prologue: Prologue | None) -> jax.Array:
  """The 2-bit kernels on x `[m, K]`, quantized per token to int8 first with `quantize_x` (after
  `prologue`, in the same kernel, `quantize_rows`; without `quantize_x` the prologue must be
  applied already): the dp4a GEMV for int8 activations of one or two rows (`config.gemv_wins`); on
  Hopper the Mosaic GPU kernel for int8 activations where it measured faster
  (`config.mgpu_2bit_wins`); otherwise the Triton-backend MMA kernel, which reads x as it is
  (masking rows and columns past the ends)."""
  m, (n, nbytes) = x.shape[0], p.codes.shape
  if (config is None and quantize_x and out_init is None and on_hopper()
      and config_lib.mgpu_2bit_wins(m, n, p.in_features)):
    config = config_lib.choose_mgpu_2bit(m, n, p.in_features)
  if isinstance(config, two_bit_mgpu.TwoBitMgpuConfig):
    if not quantize_x:
      raise ValueError(f"{config} is a Mosaic GPU 2-bit kernel config: it needs quantize_x=True.")
    return _two_bit_mgpu(x, p, config, out_dtype, out_init, prologue)
  kp = nbytes * 4
  n16 = _round_up(n, 16)
  codes = _pad_to(p.codes, 0, n16, 0x55)
  col_scale = _pad_to(p.scale, 0, n16)
  gemv = isinstance(config, gemv_dp4a.GemvConfig) or (
      config is None and quantize_x and config_lib.gemv_wins(m))
  if gemv:
    if not quantize_x:
      raise ValueError(f"{config} is a dp4a GEMV config: it needs quantize_x=True.")
    c = config or config_lib.choose_gemv(m, n16, p.in_features)
  else:
    c = config or config_lib.choose(m, n16, kp, quantize_x)
    if n16 % c.block_n or c.block_m % 16 or c.split_k < 1:
      raise ValueError(f"{c} does not tile this problem: block_n={c.block_n} must divide N "
                       f"padded to 16 ({n16}), block_m={c.block_m} must be a multiple of 16 and "
                       f"split_k={c.split_k} positive.")
  if gemv and c.quantizes_x:
    return gemv_dp4a.matmul_quantizing(x, codes, col_scale, prologue, config=c,
                                       out_dtype=out_dtype, interpret=off_gpu(),
                                       out_init=out_init)[:, :n]
  row_scale = None
  if quantize_x:
    x, row_scale, row_sum = quantize_rows(x, prologue, rows=m,
                                          layout="planes" if gemv else "natural",
                                          interpret=off_gpu())
  if gemv:
    return gemv_dp4a.matmul(x, row_scale, row_sum, codes, col_scale, config=c,
                            out_dtype=out_dtype, interpret=off_gpu(), out_init=out_init)[:, :n]
  parts = pallas_triton.matmul(x, codes, col_scale, row_scale=row_scale, config=c,
                               out_dtype=_part_dtype(c, out_dtype),
                               interpret=off_gpu(), out_init=out_init)
  return _product(parts, m, n)


def _int8_gemm(x: jax.Array, prologue: Prologue | None, t: jax.Array, col_scale: jax.Array,
               out_dtype, config: int8_gemm.GemmConfig | int8_gemm_mgpu.MgpuGemmConfig | None,
               out_init: jax.Array | None) -> jax.Array:
  """`(xq @ t.T) * row_scale * col_scale` through a Pallas int8 GEMM, padding M, N and K, with x
  `[m, K]` (or `prologue`'s input) quantized per token to `xq`, `row_scale` by one kernel,
  `quantize_rows`, which also computes the prologue, as ahead of the 2-bit kernels."""
  m, (n, k) = x.shape[0], t.shape
  n16 = _round_up(n, 16)
  c = config or config_lib.choose_int8_gemm(m, n16, k, on_hopper())
  interpret = off_gpu()
  mosaic = isinstance(c, int8_gemm_mgpu.MgpuGemmConfig)
  if mosaic:
    if out_init is not None:
      raise ValueError("out_init does not apply to the Mosaic GPU int8 GEMM (its interpret mode "
                       "already fills the output with NaN before the kernel runs).")
    _check_hopper(c)
    multiples = (c.tile_m, c.cta_n, c.tile_k)
  else:
    if n16 % c.block_n or c.block_m % 16 or c.block_k % 32 or c.split_k < 1:
      raise ValueError(f"{c} does not tile this problem: block_n={c.block_n} must divide N "
                       f"padded to 16 ({n16}), block_m={c.block_m} must be a multiple of 16, "
                       f"block_k={c.block_k} of 32, and split_k={c.split_k} positive.")
    multiples = (c.block_m, 16, c.block_k * c.split_k)
  xq, row_scale, _ = quantize_rows(x, prologue, rows=m, layout="natural", interpret=interpret)
  mp, np_, kp = (_round_up(size, multiple) for size, multiple in zip((m, n, k), multiples))
  xq, t = _pad_to(_pad_to(xq, 1, kp), 0, mp), _pad_to(_pad_to(t, 1, kp), 0, np_)
  row_scale, col_scale = _pad_to(row_scale, 0, mp), _pad_to(col_scale, 0, np_)
  if mosaic:
    y = int8_gemm_mgpu.matmul(xq, t, row_scale, col_scale, config=c, out_dtype=out_dtype,
                              num_sms=4 if interpret else jax.devices()[0].core_count,
                              interpret=interpret)
    return y[:m, :n]
  parts = int8_gemm.matmul(xq, t, row_scale, col_scale, config=c,
                           out_dtype=_part_dtype(c, out_dtype), interpret=interpret,
                           out_init=out_init)
  return _product(parts, m, n)


def ternary_matmul(x: jax.Array, p: PackedTernary, *, quantize_x: bool = False,
                   implementation: str | None = None,
                   config: (pallas_triton.Config | gemv_dp4a.GemvConfig
                            | two_bit_mgpu.TwoBitMgpuConfig | int8_gemm.GemmConfig
                            | int8_gemm_mgpu.MgpuGemmConfig | None) = None,
                   out_init: jax.Array | None = None,
                   int8_weight: jax.Array | None = None,
                   prologue: Prologue | None = None) -> jax.Array:
  """`y = x @ (t * gamma)` for a packed ternary weight `p` (logical `[K, N]`), or
  `y = prologue(x) @ (t * gamma)`.

  Args:
    x: float `[..., K]` (bfloat16 or float16 for the Pallas kernels); with a prologue, its input
      (`[..., prologue.input_width(K)]`).
    p: the packed weight, from `pack` or `sparse_quantize_pack`.
    quantize_x: first quantize `x` per token to int8 (`sbitnet.ops.absmax_int8`, as BitLinear
      does), then `y = (x_q @ t) * s_x * gamma` with exact int32 accumulation.
    implementation: "xla" (unpack + XLA dot; the oracle), "pallas" (the kernels; interpret mode
      off GPU), or None: XLA off GPU; on GPU the 2-bit kernel up to M = 64 (512 with
      `quantize_x` and no `int8_weight`; with one, 128 on Hopper where the Mosaic kernel serves
      the shape: `config.two_bit_serves`) and the measured faster implementation above. Pallas
      with `quantize_x` above that M quantizes x in one kernel (`quantize_rows`), unpacks the
      weight to int8 (or takes `int8_weight`) and runs an int8 GEMM with fused scales (on Hopper
      from 512 rows the Mosaic GPU one, `int8_gemm_mgpu`; otherwise the Triton-backend
      `int8_gemm`); otherwise
      a 2-bit kernel streams the packed codes: for int8 activations of one or two
      rows (`config.gemv_wins`) the dp4a GEMV (`gemv_dp4a`), on Hopper for int8 activations where it
      measured faster (`config.mgpu_2bit_wins`) the Mosaic GPU kernel (`two_bit_mgpu`),
      otherwise the Triton-backend MMA kernel (`pallas_triton`).
    config: Pallas tile override (tuning and tests): a `pallas_triton.Config` for the 2-bit
      MMA kernel, a `gemv_dp4a.GemvConfig` for the dp4a GEMV (`quantize_x` only), a
      `two_bit_mgpu.TwoBitMgpuConfig` for the Mosaic GPU 2-bit kernel (`quantize_x`, Hopper), an
      `int8_gemm.GemmConfig` for the Triton-backend int8 GEMM or an
      `int8_gemm_mgpu.MgpuGemmConfig` for the Mosaic GPU one; None picks by shape.
    out_init: Triton kernels only (tests; the dispatcher then leaves out the Mosaic GPU ones):
      the kernel's `[split_k, M, N16]` output buffer (the
      GEMV's: `[M, N16]`; the int8 GEMM's: `[split_k, Mp, N16]`, M padded to its block_m; N16 =
      N padded to 16), so that tiles left unwritten keep its (poison) values.
    int8_weight: `unpack_int8(p)`, kept by the caller: the int8 GEMMs (`quantize_x` above M = 64,
      and XLA's at any M) multiply it instead of unpacking `p` on every call. Same result.
    prologue: a row-wise op applied to x first (`sbitnet.ops.RMSNormPrologue`, a pre-norm, or
      `SwiGLUPrologue`, the gating ahead of a down projection). The Pallas kernels with
      `quantize_x` (2-bit and int8 GEMMs) compute it in their activation-quantization kernel,
      `quantize_rows` (with `config=None` where that measured faster, `config.prologue_fused`; the
      one-row GEMV on short rows computes a norm and the quantization itself,
      `GemvConfig.quantizes_x`); every other path applies it in XLA first. In float32 either way,
      quantized from float32 with `quantize_x` (else rounded to x's dtype); on the GPU XLA's and
      the kernel's reductions and transcendentals can round differently in the last bit (an int8
      step where a value sits at a tie).

  Under `jax.shard_map`, shard `p` along N (`dataclasses.replace(p, codes=P(ax, None),
  scale=P(ax))` is its spec) and pass `check_vma=False` when the Pallas path runs.

  Returns:
    `[..., N]` in the dtype of `x`, accumulated in float32 (int32 with `quantize_x`).
  """
  _check_inputs(x, p, implementation, prologue)
  if int8_weight is not None and (int8_weight.dtype != jnp.int8
                                  or int8_weight.shape != p.shape[::-1]):
    raise ValueError(f"int8_weight must be int8 {list(p.shape[::-1])} (unpack_int8 of this "
                     f"weight), got {int8_weight.dtype} {list(int8_weight.shape)}.")
  if config is not None and implementation == "xla":
    raise ValueError(f"config={config} selects a Pallas kernel's tiles; implementation='xla' "
                     "runs no kernel. Pass implementation='pallas' (or None) or drop config.")
  lead = x.shape[:-1]
  m = math.prod(lead)
  if m == 0:  # no rows: nothing for a kernel to do
    return jnp.zeros((*lead, p.shape[1]), x.dtype)
  x2 = x.reshape(m, x.shape[-1])
  kept = int8_weight is not None
  impl = implementation or _pick(m, *p.shape, x.dtype, quantize_x, kept)
  if impl == "pallas" and not quantize_x and x.dtype not in PALLAS_FLOAT_DTYPES:
    raise ValueError(f"the Pallas kernels take bfloat16/float16 activations (or quantize_x=True), "
                     f"got {x.dtype}; cast x or use implementation='xla'.")
  if isinstance(config, INT8_GEMM_CONFIGS) and not (impl == "pallas" and quantize_x):
    raise ValueError(f"{config} is an int8 GEMM config: it needs implementation='pallas' and "
                     "quantize_x=True.")
  int8_gemm_path = impl == "pallas" and quantize_x and (
      isinstance(config, INT8_GEMM_CONFIGS)
      or config is None
      and not config_lib.two_bit_serves(m, *p.shape[::-1], quantize_x, kept, on_hopper()))
  fused = impl == "pallas" and quantize_x and (
      config is not None or config_lib.prologue_fused(isinstance(prologue, SwiGLUPrologue), m))
  prologue = None if prologue is None else _rows(prologue, m)
  if prologue is not None and not fused:
    # Quantizing paths take the float32 result, as the fused kernel does.
    x2, prologue = prologue(x2, jnp.float32 if quantize_x else None), None
  if quantize_x and (impl == "xla" or int8_gemm_path):
    t = reference.unpack_int8(p) if int8_weight is None else int8_weight
    if impl == "xla":
      xq, x_scale = absmax_int8(x2)
      y = reference.matmul_int8(xq, x_scale, t, p.scale)
    else:
      y = _int8_gemm(x2, prologue, t, p.scale, x.dtype, config, out_init)
  elif impl == "xla":
    y = reference.matmul_float(x2, p.codes, p.scale)
  else:
    y = _pallas(x2, p, quantize_x, x.dtype, config, out_init, prologue)
  return y.astype(x.dtype).reshape(*lead, p.shape[1])
