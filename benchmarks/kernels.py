"""Benchmark of the packed ternary kernels on one GPU: correctness checks first, then timings.

  python benchmarks/kernels.py [--part decode|large|sweep|gemv|mgpu2bit|ceiling|fused|int8gemm|
                                       prologue|waves|all]
                               [--shapes a,b] [--ms 1,16] [--impls a,b] [--skip-checks] [--tag name]
                               [--profile]

decode/large: the implementations side by side per shape and M; sweep: the Pallas kernel over
tile configs (each checked against XLA first); gemv: the dp4a GEMV over tile configs at one or
more rows beside the MMA kernel (each checked against XLA first); ceiling: a kernel that only streams
the packed bytes at the same tilings, and the Pallas call alone (inline-PTX vs jnp decode) vs the whole op;
int8gemm: the Pallas int8 GEMMs with fused scales (Mosaic GPU and Triton backends; kept int8
weights) over tile configs, each checked against XLA first, beside XLA's int8 and bf16 GEMMs;
prologue: activation quantization with the pre-norm or SwiGLU fused in, against XLA computing it;
waves (not in all): the Mosaic GPU 2-bit kernel's streaming rate against its CTA count.
--profile (decode, large): also traces the dispatcher's int8 call (pallas_int8) and XLA's bf16
GEMM and lists their kernels with their GPU time.

Times are device-side: each measured call runs `reps` times over `R` rotating weight copies inside
one jitted fori_loop (working set > L2 where memory allows), the loop is timed with
block_until_ready after a warm-up, and the median of 5 runs divided by reps·R is reported. Inputs
are random and never zero. Prints a short table; writes JSON and markdown under $OUT (or ./out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sbitnet.kernels import pack, sparse_quantize_pack, ternary_matmul, unpack  # noqa: E402
from sbitnet.kernels.ternary_matmul import config as config_lib  # noqa: E402
from sbitnet.kernels.ternary_matmul.api import off_gpu, on_hopper  # noqa: E402
from sbitnet.kernels.ternary_matmul import (gemv_dp4a, int8_gemm, int8_gemm_mgpu,  # noqa: E402
                                           pallas_triton, two_bit_mgpu)
from sbitnet.kernels.ternary_matmul.pack import padded_rows, unpack_codes  # noqa: E402
from sbitnet.kernels.ternary_matmul.pallas_triton import Config  # noqa: E402
from sbitnet.kernels.ternary_matmul.quantize_rows import quantize_rows  # noqa: E402
from sbitnet.ops import RMSNormPrologue, SwiGLUPrologue, absmax_int8  # noqa: E402
from profiling import device_time_summary  # noqa: E402  (benchmarks/profiling.py, beside this)

# (name, K=in, N=out): Qwen2.5 projections (q/o, k/v, gate/up, down) and a 70B-class FFN.
SHAPES = [
    ("0.5b.q", 896, 896), ("0.5b.kv", 896, 128), ("0.5b.up", 896, 4864),
    ("0.5b.down", 4864, 896),
    ("1.5b.q", 1536, 1536), ("1.5b.up", 1536, 8960), ("1.5b.down", 8960, 1536),
    ("3b.q", 2048, 2048), ("3b.up", 2048, 11008), ("3b.down", 11008, 2048),
    ("8k.up", 8192, 28672),
]
DECODE_MS = (1, 4, 16, 64)
# The implementations `bench_matmul` times (each at the M where it applies).
MATMUL_IMPLS = ("xla_bf16", "xla_int8", "pallas_bf16", "pallas_int8", "ternary_xla_fused",
                "pallas_int8_mma", "ternary_xla_int8", "pallas_int8_kept",
                "pallas_unpack_int8gemm", "pallas_2bit_int8")
LARGE_MS = (256, 2048, 16384)
ROTATE_BYTES = 160e6  # working set per timed loop (H100 L2 is 50 MB)
MAX_COPIES = 24
SPEC = {"hbm_tb_s": 3.35, "int8_tops": 1979.0, "bf16_tflops": 989.0}  # H100 SXM datasheet


def _nonzero_normal(key, shape, dtype):
  x = jax.random.normal(key, shape, jnp.float32)
  return jnp.where(jnp.abs(x) < 0.1, 0.1, x).astype(dtype)


def _ternary(key, k, n, pattern=(6, 8)):
  w = jax.random.normal(key, (k, n), jnp.float32)
  return unpack(sparse_quantize_pack(w, *pattern, implementation="xla"))


def timed(fn, sets, est_s):
  """Median seconds per call of fn(*s), rotating over `sets` inside one jitted loop."""
  reps = max(1, min(200, int(0.05 / max(est_s * len(sets), 1e-7))))

  @jax.jit
  def loop(sets):
    def body(_, c):
      for s in sets:
        s, c = jax.lax.optimization_barrier((s, c))
        # Consuming every output element keeps XLA from computing only part of it.
        c = c + jnp.sum(fn(*s), dtype=jnp.float32)
      return c
    return jax.lax.fori_loop(0, reps, body, jnp.float32(0))

  jax.block_until_ready(loop(sets))
  runs = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(loop(sets))
    runs.append(time.perf_counter() - t0)
  return statistics.median(runs) / (reps * len(sets))


def copies(nbytes):
  return int(min(MAX_COPIES, max(2, math.ceil(ROTATE_BYTES / max(nbytes, 1)))))


def measure_read_bandwidth():
  """TB/s of a 1 GiB read (a sum): the ceiling for streaming packed weights."""
  x = _nonzero_normal(jax.random.key(0), (256 * 1024 * 1024,), jnp.float32)
  return x.nbytes / timed(lambda a: a, [(x,)], 3e-4) / 1e12


def measure_peak_matmul():
  k = jax.random.key(1)
  a = _nonzero_normal(k, (8192, 8192), jnp.bfloat16)
  b = _nonzero_normal(jax.random.key(2), (8192, 8192), jnp.bfloat16)
  f = 2 * 8192 ** 3
  tb = timed(lambda a, b: a @ b, [(a, b)], 2e-3)
  ai, bi = a.astype(jnp.int8), b.astype(jnp.int8)
  ti = timed(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.int32), [(ai, bi)], 1e-3)
  return f / tb / 1e12, f / ti / 1e12


# ---------------------------------------------------------------- correctness

def check_correctness(log):
  ok = True
  # The last case has all-positive x of width 8192, the worst case for the float path's
  # cancellation (x @ t = 4 x @ (1 + c/4) - 5 sum(x)).
  cases = [(1, 896, 128, (6, 8)), (2, 2048, 11008, (6, 8)), (5, 896, 4864, (2, 4)),
           (16, 4864, 896, (2, 8)),
           (64, 1536, 8960, (None, None)), (70, 2048, 256, (4, 8)), (300, 2048, 1000, (6, 8)),
           (2048, 1024, 1024, (6, 8)), (16, 8192, 1024, (6, 8))]
  for i, (m, k, n, pattern) in enumerate(cases):
    t, gamma = _ternary(jax.random.key(10 + i), k, n, pattern)
    p = pack(t, gamma)
    x = _nonzero_normal(jax.random.key(100 + i), (m, k), jnp.bfloat16)
    if i == len(cases) - 1:
      x = jnp.abs(x)
    for quantize_x in (False, True):
      ref = ternary_matmul(x, p, quantize_x=quantize_x, implementation="xla")
      cfg, poison = _poison_for(m, k, n, quantize_x)
      out = ternary_matmul(x, p, quantize_x=quantize_x, implementation="pallas", out_init=poison)
      a, b = np.asarray(out, np.float64), np.asarray(ref, np.float64)
      err = np.linalg.norm(a - b) / np.linalg.norm(b)
      good = bool(np.isfinite(a).all() and err < 1e-2)
      ok &= good
      log(f"check matmul m={m} k={k} n={n} {pattern} int8={quantize_x} {cfg}: rel_err={err:.2e} "
          f"{'ok' if good else 'FAIL'}")
  # Without split-K (and with it, for the Mosaic 2-bit kernel, whose split sums are int32) the
  # int8 path is exact up to the scales, which the kernel applies as XLA does
  # (1 / (127 / max(amax, eps)) by IEEE divisions, then * gamma): outputs must be bit-identical.
  t, gamma = _ternary(jax.random.key(8), 2048, 1024, (6, 8))
  p = pack(t, gamma)
  x = _nonzero_normal(jax.random.key(9), (100, 2048), jnp.bfloat16)
  ref = np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="xla"), np.float32)
  gemv = gemv_dp4a.GemvConfig
  for cfg, rows in ((Config(block_n=128, split_k=1), 100),
                    (Config(block_m=64, block_n=128, swap_ab=True), 100),
                    (gemv(block_n=8, block_w=128), 1), (gemv(block_n=4, block_w=64), 3),
                    (gemv(block_n=16, block_w=256, num_warps=8), 4),
                    (gemv(block_n=8, block_w=128, quantizes_x=True), 1),
                    (gemv(block_n=4, block_w=64, quantizes_x=True), 3)) + (
                        # The Mosaic GPU 2-bit kernel: fused epilogue (split 1), split K, 1-2
                        # warpgroups, several x row tiles (Hopper only).
                        ((two_bit_mgpu.TwoBitMgpuConfig(tile_n=128, warpgroups=2), 16),
                         (two_bit_mgpu.TwoBitMgpuConfig(warpgroups=1), 100),
                         (two_bit_mgpu.TwoBitMgpuConfig(split_k=2), 100),
                         (two_bit_mgpu.TwoBitMgpuConfig(tile_m=16), 40))
                        if on_hopper() else ()):
    out = np.asarray(ternary_matmul(x[:rows], p, quantize_x=True, implementation="pallas",
                                    config=cfg), np.float32)
    diff = int(np.sum(out != ref[:rows]))
    ok &= diff == 0
    log(f"check int8 without split-K bit-identical to XLA ({_short(cfg)}, m={rows}): differing "
        f"outputs={diff} {'ok' if diff == 0 else 'FAIL'}")
  ok &= check_prologues(p, x, log)
  for k, n, pattern in [(4864, 896, (6, 8)), (896, 4864, (2, 4)), (2048, 1000, (None, None))]:
    w = jax.random.normal(jax.random.key(k), (k, n), jnp.float32)
    a = sparse_quantize_pack(w, *pattern, implementation="pallas")
    b = sparse_quantize_pack(w, *pattern, implementation="xla")
    diff = int(jnp.sum(a.codes != b.codes))
    good = diff == 0 and bool(jnp.all(a.scale == b.scale))
    ok &= good
    log(f"check sparse_quantize k={k} n={n} {pattern}: differing code bytes={diff} "
        f"{'ok' if good else 'FAIL'}")
  return ok


def check_prologues(p, x, log):
  """The pre-norm (with a residual) and SwiGLU prologues computed in the quantization kernel,
  against XLA applying them first (jitted, as in a model), through each 2-bit kernel and the
  int8 GEMM (the norm also through the GEMV that quantizes x itself). The same
  float32 math, but XLA's and Triton's reductions, rsqrt and exp need not round alike on the GPU:
  the check is the 1e-2 tolerance, and the differing int8 activations and outputs are reported."""
  ok = True
  scale = 1 + 0.1 * _nonzero_normal(jax.random.key(4), (p.in_features,), jnp.float32)
  cases = {"rms_norm+residual": (x, lambda r: RMSNormPrologue(scale, 1e-6, x[::-1][:r])),
           "swiglu": (jnp.concatenate([x, x[::-1]], axis=1), lambda r: SwiGLUPrologue())}
  configs = [(gemv_dp4a.GemvConfig(block_n=8, block_w=128), 1), (Config(block_n=128), 16),
             (config_lib.choose_int8_gemm(100, p.shape[1], p.in_features, on_hopper()), 100)] + (
      [(two_bit_mgpu.TwoBitMgpuConfig(warpgroups=1), 16)] if on_hopper() else [])
  quantizing_gemv = (gemv_dp4a.GemvConfig(block_n=8, block_w=128, quantizes_x=True), 1)
  for name, (xin, prologue) in cases.items():
    pro = prologue(16)
    q = quantize_rows(xin[:16], pro, rows=16, layout="natural", interpret=off_gpu())[0]
    q_xla = jax.jit(lambda v, pro: absmax_int8(pro(v, jnp.float32))[0])(xin[:16], pro)
    log(f"prologue {name}: int8 activations differing from XLA's: "
        f"{int(jnp.sum(q != q_xla))} of {q.size}")
    for cfg, rows in configs + [quantizing_gemv] * (name != "swiglu"):
      ref = np.asarray(jax.jit(lambda v, pro: ternary_matmul(
          v, p, quantize_x=True, implementation="xla", prologue=pro))(xin[:rows], prologue(rows)),
          np.float64)
      out = np.asarray(ternary_matmul(xin[:rows], p, quantize_x=True, implementation="pallas",
                                      config=cfg, prologue=prologue(rows)), np.float64)
      err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
      good = bool(np.isfinite(out).all() and err < 1e-2)
      ok &= good
      log(f"check prologue {name} fused ({_short(cfg)}, m={rows}): rel_err={err:.2e}, differing "
          f"outputs={int(np.sum(out != ref))} of {out.size} {'ok' if good else 'FAIL'}")
  return ok


def _poison_for(m, k, n, quantize_x):
  """(config, a NaN output buffer or None) for the Pallas kernel `ternary_matmul` dispatches to:
  the dp4a GEMV (int8, one row) writes `[M, N16]`, the 2-bit MMA kernel `[split_k, M, N16]`,
  the Triton int8 GEMM (int8 above TWO_BIT_MAX_M; no int8 weight is kept here) `[split_k, Mp,
  N16]`; the Mosaic GPU int8 GEMM allocates its own output (None: the comparison with XLA is the
  check)."""
  n16 = -(-n // 16) * 16
  if quantize_x and config_lib.gemv_wins(m):
    return (config_lib.choose_gemv(m, n16, k),
            jnp.full((m, n16), jnp.nan, jnp.bfloat16))
  if quantize_x and m > config_lib.two_bit_max_m(True, int8_weight_kept=False):
    cfg = config_lib.choose_int8_gemm(m, n16, k, on_hopper())
    if isinstance(cfg, int8_gemm_mgpu.MgpuGemmConfig):
      return cfg, None
    rows = -(-m // cfg.block_m) * cfg.block_m
  else:
    cfg, rows = config_lib.choose(m, n16, padded_rows(k), quantize_x), m
  dtype = jnp.float32 if cfg.split_k > 1 else jnp.bfloat16
  return cfg, jnp.full((cfg.split_k, rows, n16), jnp.nan, dtype)


# ---------------------------------------------------------------- timings

def bench_matmul(name, k, n, ms, log, peaks, profile=False, only=None):
  """Every implementation of one layer shape at each M (`only`: these implementation names)."""
  rows = []
  t, gamma = _ternary(jax.random.key(k * 7 + n), k, n)
  p = pack(t, gamma)
  packed_bytes = p.codes.nbytes + p.scale.nbytes
  n16 = -(-n // 16) * 16  # N as the kernels' configs see it
  r = copies(k * n * 2)
  ws_bf16 = [(t.astype(jnp.bfloat16) + 0 * i) for i in range(r)]
  ws_i8 = [t + jnp.int8(0) * i for i in range(r)]
  ps = [pack(t, gamma + i * 1e-3) for i in range(r)]
  for m in ms:
    x = _nonzero_normal(jax.random.key(m), (m, k), jnp.bfloat16)
    xq, sx = absmax_int8(x)
    flops = 2 * m * k * n
    est = max(flops / 500e12, k * n * 2 / 2.5e12)
    impls = {
        "xla_bf16": (lambda x, w: x @ w, [(x, w) for w in ws_bf16]),
        "xla_int8": (lambda xq, sx, w: (jax.lax.dot(xq, w, preferred_element_type=jnp.int32)
                                         .astype(jnp.float32) * sx * gamma).astype(jnp.bfloat16),
                     [(xq, sx, w) for w in ws_i8]),
        "pallas_bf16": (lambda x, p: ternary_matmul(x, p, implementation="pallas"),
                        [(x, q) for q in ps]),
        "pallas_int8": (lambda x, p: ternary_matmul(x, p, quantize_x=True,
                                                    implementation="pallas"),
                        [(x, q) for q in ps]),
    }
    if m <= config_lib.DECODE_MAX_M:
      # Whether XLA fuses the 2-bit unpack into its own GEMV (bf16 dot at default precision).
      impls["ternary_xla_fused"] = (
          lambda x, p: (jnp.dot(x, unpack_codes(p.codes)[:, :k].T.astype(x.dtype),
                                preferred_element_type=jnp.float32) * p.scale).astype(x.dtype),
          [(x, q) for q in ps])
    if config_lib.gemv_wins(m):
      # The 2-bit MMA kernel where the dispatcher takes the dp4a GEMV for int8 activations.
      mma = config_lib.choose(m, n16, padded_rows(k), int8=True)
      impls["pallas_int8_mma"] = (
          lambda x, p: ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=mma),
          [(x, q) for q in ps])
    if m > config_lib.DECODE_MAX_M:
      impls["ternary_xla_int8"] = (
          lambda x, p: ternary_matmul(x, p, quantize_x=True, implementation="xla"),
          [(x, q) for q in ps])
      # The int8 GEMM on a kept int8 weight (what --int8_weights runs above DECODE_MAX_M).
      impls["pallas_int8_kept"] = (
          lambda x, p, w: ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                                         int8_weight=w),
          [(x, q, w.T) for q, w in zip(ps, ws_i8)])
    if config_lib.DECODE_MAX_M < m <= config_lib.TWO_BIT_MAX_M:
      # The int8 GEMM with the codes unpacked per call, where the dispatcher streams them instead.
      gemm = config_lib.choose_int8_gemm(m, n16, k, on_hopper())
      impls["pallas_unpack_int8gemm"] = (
          lambda x, p: ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                                      config=gemm),
          [(x, q) for q in ps])
    if m > config_lib.TWO_BIT_MAX_M:
      # The 2-bit kernel where the dispatcher no longer sends int8 activations.
      two_bit = config_lib.choose(m, n16, padded_rows(k), int8=True)
      impls["pallas_2bit_int8"] = (
          lambda x, p: ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                                      config=two_bit),
          [(x, q) for q in ps])
    res = {}
    for impl, (fn, sets) in impls.items():
      if only and impl not in only:
        continue
      try:
        res[impl] = timed(fn, sets, est)
      except Exception as e:  # a failing variant is reported, the rest still run
        log(f"  {name} m={m} {impl}: ERROR {type(e).__name__}: {str(e)[:300]}")
    base = res.get("xla_bf16")
    for impl, sec in res.items():
      row = dict(shape=name, k=k, n=n, m=m, impl=impl, us=sec * 1e6, copies=r,
                 speedup_vs_bf16=(base / sec) if base else None,
                 tops=flops / sec / 1e12,
                 int8_peak_frac=flops / sec / 1e12 / SPEC["int8_tops"],
                 packed_hbm_frac=(packed_bytes / sec / 1e12 / peaks["read_tb_s"]
                                  if impl.startswith(("pallas", "ternary")) else None))
      rows.append(row)
    log(f"  {name:10s} m={m:5d} " + " ".join(
        f"{i}={v * 1e6:8.1f}us" for i, v in res.items()))
    if profile:  # device time of the dispatcher's int8 call and of XLA's bf16 GEMM, by kernel
      for impl, args in (("pallas_int8", (x, p)), ("xla_bf16", (x, ws_bf16[0]))):
        if impl not in res:
          continue
        op = jax.jit(impls[impl][0])
        jax.block_until_ready(op(*args))  # compiled (and autotuned) before the trace
        trace = device_time_summary(lambda: op(*args), calls=20, top=8)
        next(r for r in rows if r["m"] == m and r["impl"] == impl)["profile"] = trace
        log(f"    {impl} profile: {trace['kernels_per_call']:.0f} kernels, "
            f"{trace['gpu0_busy_ms_per_call'] * 1e3:.1f} us busy per call: " + ", ".join(
                f"{kname[:48]} {ms_ * 1e3:.1f} us" for ms_, _, kname in
                trace["top_kernels_ms_per_call"]))
  return rows


SWEEP_SHAPES = {"8k.up": (8192, 28672), "3b.up": (2048, 11008), "3b.down": (11008, 2048),
                # the Qwen-3B model's fused projections (q/k/v, gate/up) and o
                "3b.qkv": (2048, 2560), "3b.o": (2048, 2048), "3b.gateup": (2048, 22016)}


def sweep_candidates(m, k, n, int8):
  """Tile configs to time for one problem (the dispatcher's choice is added by the caller)."""
  block_ns = [bn for bn in (64, 128, 256) if n % bn == 0 and n // bn >= 8]
  if m > 16:
    return [Config(block_m=64, block_n=bn, split_k=s, swap_ab=swap)
            for bn in block_ns for s in (1, 2, 4) for swap in (False, True)]
  splits = (1, 2, 3, 4, 6, 8) if k <= 8192 else (4, 8, 16, 21, 32)
  return ([Config(block_m=16, block_n=bn, split_k=s) for bn in block_ns for s in splits] +
          [Config(block_m=16, block_n=bn, split_k=splits[3], swap_ab=True) for bn in block_ns] +
          [Config(block_m=16, block_n=128, split_k=splits[3], num_warps=8),
           Config(block_m=16, block_n=128, split_k=splits[3], num_stages=4)])


def _sweep_inputs(name: str, m: int):
  """(K, N, rotating packed copies of one random 6:8 weight, x bf16 [m, K]) for a sweep shape."""
  k, n = SWEEP_SHAPES[name]
  t, gamma = _ternary(jax.random.key(3), k, n)
  ps = [pack(t, gamma + i * 1e-3) for i in range(copies(k * n // 4))]
  return k, n, ps, _nonzero_normal(jax.random.key(m), (m, k), jnp.bfloat16)


def bench_sweep(shapes, m, log):
  """Times ternary_matmul (the whole op: quantize/pad/permute, kernel, split-K sum) over tile
  configs; each config's output is first compared with the XLA path."""
  rows = []
  for name in shapes:
    k, n, ps, x = _sweep_inputs(name, m)
    for quantize_x in (True, False):
      chosen = config_lib.choose(m, n, padded_rows(k), quantize_x)
      cands = sweep_candidates(m, k, n, quantize_x)
      if not cands:
        continue
      cands = [chosen] + [c for c in cands if c != chosen]
      ref = np.asarray(ternary_matmul(x, ps[0], quantize_x=quantize_x, implementation="xla"),
                       np.float64)
      for c in cands:
        def f(x, p, c=c):
          return ternary_matmul(x, p, quantize_x=quantize_x, implementation="pallas", config=c)
        try:
          out = np.asarray(jax.jit(f)(x, ps[0]), np.float64)
          err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
          sec = timed(f, [(x, q) for q in ps], max(k * n / 4 / 2e12, 2 * m * k * n / 400e12))
        except Exception as e:  # a failing config is reported, the rest still run
          log(f"  sweep {name} m={m} int8={quantize_x:d} {c}: ERROR {type(e).__name__}: "
              f"{str(e)[:300]}")
          continue
        rows.append(dict(shape=name, k=k, n=n, m=m, int8=quantize_x, config=str(c),
                         us=sec * 1e6, rel_err=err, chosen=c == chosen))
        log(f"  sweep {name:8s} m={m:4d} int8={quantize_x:d} {_short(c)}: {sec * 1e6:8.1f}us "
            f"err={err:.1e}{'  <- default' if c == chosen else ''}")
  return rows


def checked_timing(f, first_args, ref, sets, est, label, log):
  """Seconds per call of f, timed only after f(*first_args) matched `ref` (relative error
  < 1e-3); None (logged) if it did not or if f failed, so that the other configs still run."""
  try:
    out = np.asarray(jax.jit(f)(*first_args), np.float64)
    err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    if not err < 1e-3:
      log(f"  {label}: WRONG rel_err={err:.2e}")
      return None
    return timed(f, sets, est)
  except Exception as e:  # noqa: BLE001  (a failing config is reported, the rest still run)
    log(f"  {label}: ERROR {type(e).__name__}: {str(e)[:300]}")
    return None


def _int8_case(name: str, m: int):
  """Inputs of a whole-op comparison with int8 activations of m rows on a sweep shape: (K, N,
  rotating packed copies, x, the XLA path's output, a time estimate, {"xla_bf16": seconds})."""
  k, n, ps, x = _sweep_inputs(name, m)
  wb = [unpack(q)[0].astype(jnp.bfloat16) for q in ps[:copies(2 * k * n)]]
  ref = np.asarray(ternary_matmul(x, ps[0], quantize_x=True, implementation="xla"), np.float32)
  est = max(k * n / 4 / 2e12, 2 * m * k * n / 400e12)
  return k, n, ps, x, ref, est, {"xla_bf16": timed(lambda x, w: x @ w, [(x, w) for w in wb], est)}


def _record(rows, res, name, k, n, m, p):
  """Appends one row per timed implementation in `res` (seconds); returns (XLA bf16 seconds,
  packed bytes, [(seconds, impl)] fastest first without XLA bf16)."""
  base = res["xla_bf16"]
  nbytes = p.codes.nbytes + p.scale.nbytes
  for impl, sec in res.items():
    rows.append(dict(shape=name, k=k, n=n, m=m, impl=impl, us=sec * 1e6,
                     speedup_vs_bf16=base / sec, packed_tb_s=nbytes / sec / 1e12))
  return base, nbytes, sorted((v, i) for i, v in res.items() if i != "xla_bf16")


def gemv_candidates(n, k, prologue):
  """dp4a GEMV tile configs to time (the dispatcher's is added by the caller): on x quantized
  ahead (a short list with a prologue) and quantized by the GEMV, on rows of up to 8192, and with
  SwiGLU ahead on a wider grid at any K."""
  G = gemv_dp4a.GemvConfig
  cands = []
  if prologue == "none":
    cands += [G(bn, bw) for bn in (4, 8, 16, 32) for bw in (16, 32, 64, 128)]
    cands += [G(16, 64, num_warps=2), G(16, 64, num_warps=8), G(8, 32, num_warps=2),
              G(32, 32, num_warps=8), G(16, 64, num_stages=3)]
    cands += [G(bn, bw, num_warps=8) for bn, bw in ((32, 64), (32, 128), (64, 32), (64, 64))]
  if prologue != "norm":
    # Long steps: more code bytes in flight per program (few rows, many programs).
    cands += [G(bn, bw, num_warps=w) for bn in (1, 2, 4) for bw in (256, 512, 1024)
              for w in (4, 8)]
  cands += [G(bn, bw) for bn, bw in ((1, 64), (1, 128), (2, 128))]
  if k <= 8192:
    cands += [G(bn, bw, quantizes_x=True) for bn in (1, 2, 4, 8, 16, 32) for bw in (64, 128)]
    cands += [G(bn, 128, num_warps=8, quantizes_x=True) for bn in (4, 16)]
  if prologue == "swiglu":
    cands += [G(bn, bw, num_warps=w, quantizes_x=True) for bn in (1, 2, 4, 8, 16)
              for bw in (128, 256, 512, 1024) for w in (4, 8, 16)]
  return [c for c in cands if not n % c.block_n]


def _gemv_prologue(name: str, k: int, m: int):
  """The prologue of a GEMV case and its x's width: the pre-norm with its residual, as the
  model's q/k/v and gate/up projections take it, or SwiGLU, as the down projection does."""
  if name == "norm":
    return RMSNormPrologue(1 + 0.1 * _nonzero_normal(jax.random.key(5), (k,), jnp.float32),
                           1e-6, _nonzero_normal(jax.random.key(6), (m, k), jnp.bfloat16)), k
  return (SwiGLUPrologue(), 2 * k) if name == "swiglu" else (None, k)


def bench_gemv(shapes, ms, log, prologue="none"):
  """Whole op with int8 activations of `ms` rows (after a `prologue`: "norm", "swiglu" or
  "none", `_gemv_prologue`): the dp4a GEMV over tile configs, on x quantized ahead by
  `quantize_rows` or by the GEMV itself (`quantizes_x`; the dispatcher sends it one row), the
  2-bit MMA kernel at its config and the dispatcher (config=None, which may apply the prologue
  in XLA first), each checked against XLA first; XLA bf16 beside (without the prologue)."""
  rows = []
  for name in shapes:
    for m in ms:
      k, n, ps, x, ref, est, res = _int8_case(name, m)
      pro, width = _gemv_prologue(prologue, k, m)
      if pro is not None:
        x = _nonzero_normal(jax.random.key(7), (m, width), jnp.bfloat16)
        ref = np.asarray(jax.jit(lambda x, pro: ternary_matmul(
            x, ps[0], quantize_x=True, implementation="xla", prologue=pro))(x, pro), np.float32)
      chosen = config_lib.choose_gemv(m, n, k)
      mma = config_lib.choose(m, n, padded_rows(k), int8=True)
      flipped = dataclasses.replace(chosen, quantizes_x=not chosen.quantizes_x)
      for c in [None, mma, chosen, flipped] + [c for c in gemv_candidates(n, k, prologue)
                                               if c not in (chosen, flipped)]:
        def f(x, p, pro, c=c):
          return ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=c,
                                prologue=pro)
        label = ("dispatcher" if c is None else
                 f"mma {_short(c)}" if isinstance(c, Config) else _short(c))
        sec = checked_timing(f, (x, ps[0], pro), ref, [(x, q, pro) for q in ps], est,
                             f"gemv {name} m={m} {label}", log)
        if sec is not None:
          res[label + (" (default)" if c == chosen else "")] = sec
      if pro is None:
        xq, scale, total = quantize_rows(x, rows=m, layout="planes", interpret=off_gpu())
        alone = dataclasses.replace(chosen, quantizes_x=False)
        res["gemv kernel alone (default tiles)"] = timed(
            lambda xq, scale, total, p: gemv_dp4a.matmul(xq, scale, total, p.codes, p.scale,
                                                         config=alone, out_dtype=jnp.bfloat16,
                                                         interpret=off_gpu()),
            [(xq, scale, total, q) for q in ps], est)
      base, nbytes, ranked = _record(rows, res, name, k, n, m, ps[0])
      for row in rows[-len(res):]:
        row["prologue"] = {"norm": "rms_norm+residual", "swiglu": "swiglu"}.get(prologue)
      log(f"  gemv {name:8s} m={m:3d} prologue={prologue} bf16={base * 1e6:7.1f}us"
          + "".join(f"\n      {i}: {v * 1e6:7.1f}us ({base / v:.2f}x, {nbytes / v / 1e12:.2f} TB/s)"
                    for v, i in ranked[:5]) + "".join(
          f"\n      {i}: {v * 1e6:7.1f}us ({base / v:.2f}x)" for v, i in ranked[5:]
          if "default" in i or i.startswith(("mma", "dispatcher")) or i == _short(flipped)))
  return rows


def mgpu_2bit_candidates(m, k, n):
  """Tile configs of the Mosaic GPU 2-bit kernel for one problem: one or two warpgroups of 64 or
  128 code rows (128 only while the four accumulators fit: M <= 32), each without a K split and
  with the smallest splits giving >= 1 and >= 2 CTAs per SM (132), 3 or 5 stages unsplit, and
  3 or 4 stages unsplit with the epilogue's vectors loaded before the pipeline."""
  M = two_bit_mgpu.TwoBitMgpuConfig
  steps = -(-padded_rows(k) // two_bit_mgpu.STEP_K)
  m_tiles = -(-m // two_bit_mgpu.MAX_TILE_M)
  cands = []
  for tile_n, wgs in ((64, 1), (64, 2), (128, 1), (128, 2)):
    if n % (tile_n * wgs) or (tile_n == 128 and m > 32):
      continue
    ctas = n // (tile_n * wgs) * m_tiles
    splits = {1} | {next((d for d in range(1, steps + 1) if not steps % d and ctas * d >= target),
                         steps) for target in (132, 264)}
    cands += [M(tile_n=tile_n, warpgroups=wgs, split_k=s) for s in sorted(splits)]
    cands += [M(tile_n=tile_n, warpgroups=wgs, stages=st) for st in (3, 5)]
    cands += [M(tile_n=tile_n, warpgroups=wgs, stages=st, prefetch_scales=True) for st in (3, 4)]
  return cands


def bench_mgpu_2bit(shapes, ms, log):
  """Whole op with int8 activations: the Mosaic GPU 2-bit kernel over tile configs beside the
  dispatcher's path and XLA bf16, each checked against XLA (bit-identical) first."""
  rows = []
  for name in shapes:
    for m in ms:
      k, n, ps, x, ref, est, res = _int8_case(name, m)
      for c in [None] + mgpu_2bit_candidates(m, k, n):
        def f(x, p, c=c):
          return ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=c)
        label = "dispatcher" if c is None else _short(c)
        sec = checked_timing(f, (x, ps[0]), ref, [(x, q) for q in ps], est,
                             f"mgpu2bit {name} m={m} {label}", log)
        if sec is not None:
          res[label] = sec
      base, nbytes, ranked = _record(rows, res, name, k, n, m, ps[0])
      log(f"  mgpu2bit {name:8s} m={m:3d} bf16={base * 1e6:7.1f}us" + "".join(
          f"\n      {i}: {v * 1e6:7.1f}us ({base / v:.2f}x, {nbytes / v / 1e12:.2f} TB/s)"
          for v, i in ranked))
  return rows


def _short(c):
  if isinstance(c, (int8_gemm.GemmConfig, int8_gemm_mgpu.MgpuGemmConfig)):
    return _short_gemm(c)
  if isinstance(c, two_bit_mgpu.TwoBitMgpuConfig):
    prefetch = " prefetch" if c.prefetch_scales else ""
    return (f"mosaic tn{c.tile_n} wg{c.warpgroups} tm{c.tile_m} s{c.stages} split{c.split_k}"
            f"{prefetch}")
  if isinstance(c, gemv_dp4a.GemvConfig):
    quantizing = " quantizing" if c.quantizes_x else ""
    return f"gemv bn{c.block_n} bw{c.block_w} w{c.num_warps} s{c.num_stages}{quantizing}"
  swap = " swap" if c.swap_ab else ""
  return f"bm{c.block_m} bn{c.block_n} split{c.split_k} w{c.num_warps} s{c.num_stages}{swap}"


def _stream_kernel(w_ref, o_ref, *, steps, words):
  s = pl.program_id(1)
  last = w_ref.shape[1] // words - 1

  def body(i, acc):
    return acc ^ w_ref[:, pl.ds(jnp.minimum(s * steps + i, last) * words, words)]

  acc = jax.lax.fori_loop(0, steps, body, jnp.zeros((w_ref.shape[0], words), jnp.int32))
  o_ref[...] = jnp.sum(acc, axis=1)


def stream(words, block_n, nbytes, split_k, num_warps=4, num_stages=3):
  """The ceiling of the kernel's load loop: reads int32 `[N, Kp / 16]` (the packed bytes) with
  the matmul's tiling (`block_n` columns, `nbytes` bytes of each per step, split-K) and XORs them;
  no decode, no dot. Returns int32 `[split_k, N]`."""
  n, w = words.shape
  per_step = nbytes // 4
  steps = -(-(w // per_step) // split_k)
  return pl.pallas_call(
      functools.partial(_stream_kernel, steps=steps, words=per_step),
      out_shape=jax.ShapeDtypeStruct((split_k, n), jnp.int32),
      grid=(n // block_n, split_k),
      in_specs=[pl.BlockSpec((block_n, w), lambda j, s: (j, 0))],
      out_specs=pl.BlockSpec((None, block_n), lambda j, s: (s, j)),
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=off_gpu(),
  )(words)


def bench_ceiling(shapes, log, peaks):
  """The streaming-only kernel at the matmul's tilings: what Pallas/Triton reaches on the bytes."""
  rows = []
  for name in shapes:
    k, n = SWEEP_SHAPES[name]
    t, gamma = _ternary(jax.random.key(3), k, n)
    r = copies(k * n // 4)
    words = [jax.lax.bitcast_convert_type(
        pack(t, gamma + i).codes.reshape(n, -1, 4), jnp.int32) for i in range(r)]
    nbytes = words[0].nbytes
    for bn in (64, 128, 256):
      for rw in (32, 128):
        for split in (1, 4):
          if n % bn or (k // 4) % rw:
            continue
          sec = timed(lambda w: stream(w, bn, rw, split), [(w,) for w in words], nbytes / 3e12)
          frac = nbytes / sec / 1e12 / peaks["read_tb_s"]
          rows.append(dict(shape=name, block_n=bn, bytes_per_step=rw, split_k=split, us=sec * 1e6,
                           bw_frac=frac))
          log(f"  ceiling {name:8s} bn{bn} bytes{rw} split{split}: {sec * 1e6:7.1f}us "
              f"{nbytes / sec / 1e12:.2f} TB/s ({frac:.2f} of read BW)")
  return rows


WAVE_CTAS = (66, 112, 128, 132, 198, 264)


def bench_waves(ms, log, peaks, k=8192):
  """How the Mosaic GPU 2-bit kernel's streaming rate depends on its CTA count: K = 8192 and
  N = ctas · 256 (the 8192×28672 config, two warpgroups of 128 code rows: 28672 is 112 CTAs on
  132 SMs), random 6:8 codes, x quantized ahead; the kernel alone and the whole op, at 3 and 4
  stages. Per-SM-bound streaming would show packed TB/s growing with the CTAs up to 132."""
  rows = []
  interpret = off_gpu()
  for m in ms:
    x = _nonzero_normal(jax.random.key(m), (m, k), jnp.bfloat16)
    rows_of_x = two_bit_mgpu.TwoBitMgpuConfig(tile_n=128, warpgroups=2).rows(m)[1]
    xq, xs, off = quantize_rows(x, rows=rows_of_x, layout="step_planes", interpret=interpret)
    for ctas in WAVE_CTAS:
      n = ctas * 256
      t, gamma = _ternary(jax.random.key(ctas), k, n)
      ps = [pack(t, gamma + i * 1e-3) for i in range(copies(n * k // 4))]
      del t
      codes, col_scale = [p.codes for p in ps], ps[0].scale
      nbytes = codes[0].nbytes + col_scale.nbytes
      for stages in (3, 4):
        c = two_bit_mgpu.TwoBitMgpuConfig(tile_n=128, warpgroups=2, stages=stages)
        res = {"kernel": timed(
            lambda xq, w: two_bit_mgpu.matmul_codes(xq, w, off, xs, col_scale, config=c,
                                                    out_dtype=jnp.bfloat16, interpret=interpret),
            [(xq, w) for w in codes], nbytes / 3e12),
            "whole_op": timed(
            lambda x, w: two_bit_mgpu.matmul(x, w, col_scale, config=c, out_dtype=jnp.bfloat16,
                                             interpret=interpret),
            [(x, w) for w in codes], nbytes / 3e12)}
        for what, sec in res.items():
          tb_s = nbytes / sec / 1e12
          frac = tb_s / peaks["read_tb_s"]
          rows.append(dict(m=m, k=k, n=n, ctas=ctas, stages=stages, what=what, us=sec * 1e6,
                           packed_tb_s=tb_s, bw_frac=frac))
          log(f"  waves m={m} ctas={ctas:3d} n={n} s{stages} {what:8s}: {sec * 1e6:7.1f}us "
              f"{tb_s:.2f} TB/s ({frac:.2f} of read BW)")
  return rows


def bench_prologue(ms, log):
  """Activation quantization with a prologue (the 3B model's pre-norm with its residual, K =
  2048; SwiGLU ahead of the down projection, K = 11008), natural order: XLA computing the
  prologue (float32 out) then `quantize_rows`, the dispatcher's unfused path, against
  `quantize_rows` computing it in the same kernel at several row widths held in registers
  (`max_width`: longer rows are read in chunks)."""
  rows = []
  interpret = off_gpu()
  for name, k in (("rms_norm+residual", 2048), ("swiglu", 11008)):
    for m in ms:
      width = 2 * k if name == "swiglu" else k
      sets = []
      for i in range(4):
        key = jax.random.key(1000 * m + i)
        x = _nonzero_normal(key, (m, width), jnp.bfloat16)
        pro = (SwiGLUPrologue() if name == "swiglu" else
               RMSNormPrologue(jnp.ones((k,), jnp.float32), 1e-6, x[::-1]))
        sets.append((x, pro))
      res = {"xla_prologue_then_kernel": timed(
          lambda x, pro: quantize_rows(pro(x, jnp.float32), rows=m, layout="natural",
                                       interpret=interpret)[0], sets, 5e-6)}
      for max_width in (32768, 8192, 4096):
        if max_width == 32768 or max_width < k:  # rows wider than max_width go in chunks
          res[f"fused_w{max_width}"] = timed(
              lambda x, pro, w=max_width: quantize_rows(x, pro, rows=m, layout="natural",
                                                        interpret=interpret, max_width=w)[0],
              sets, 5e-6)
      rows.append(dict(prologue=name, k=k, m=m, **{key: v * 1e6 for key, v in res.items()}))
      log(f"  prologue {name:18s} k={k} m={m:4d}: " +
          " ".join(f"{key}={v * 1e6:.2f}us" for key, v in res.items()))
  return rows


def bench_kernel_only(shapes, m, log):
  """The Pallas call alone (x pre-quantized) at the default config, with the inline-asm decode and
  with the jnp decode, against the whole op."""
  rows = []
  on_gpu = not off_gpu()
  for name in shapes:
    k, n, ps, x = _sweep_inputs(name, m)
    for quantize_x in (True, False):
      c = config_lib.choose(m, n, ps[0].codes.shape[1] * 4, quantize_x)
      dt = jnp.float32 if c.split_k > 1 else jnp.bfloat16
      xq, scale = (quantize_rows(x, rows=m, layout="natural", interpret=not on_gpu)[:2]
                   if quantize_x else (x, None))
      res = {}
      for asm in (True, False)[not on_gpu:]:
        res[f"kernel_asm={asm}"] = timed(
            lambda xq, scale, p, asm=asm: pallas_triton.matmul(
                xq, p.codes, p.scale, row_scale=scale, config=c, out_dtype=dt, asm=asm,
                interpret=not on_gpu),
            [(xq, scale, q) for q in ps], k * n / 4 / 2e12)
      res["whole_op"] = timed(lambda x, p: ternary_matmul(x, p, quantize_x=quantize_x,
                                                          implementation="pallas"),
                              [(x, q) for q in ps], k * n / 4 / 2e12)
      rows.append(dict(shape=name, m=m, int8=quantize_x, config=str(c),
                       **{key: v * 1e6 for key, v in res.items()}))
      log(f"  kernel-only {name:8s} m={m} int8={quantize_x:d} {_short(c)}: " +
          " ".join(f"{key}={v * 1e6:.1f}us" for key, v in res.items()))
  return rows


def bench_fused(log):
  rows = []
  for name, k, n in [("0.5b.up", 896, 4864), ("3b.up", 2048, 11008), ("8k.up", 8192, 28672)]:
    w = jax.random.normal(jax.random.key(5), (k, n), jnp.float32)
    for pattern in ((6, 8), (2, 4), (None, None)):
      res = {}
      for impl in ("xla", "pallas"):
        res[impl] = timed(lambda w: sparse_quantize_pack(w, *pattern, implementation=impl).codes,
                          [(w,)], k * n * 4 / 2e12)
      rows.append(dict(shape=name, k=k, n=n, pattern=str(pattern),
                       xla_us=res["xla"] * 1e6, pallas_us=res["pallas"] * 1e6))
      log(f"  fused {name:8s} {pattern}: xla(one jit, unfused ops)={res['xla'] * 1e6:8.1f}us "
          f"pallas={res['pallas'] * 1e6:8.1f}us  ({res['xla'] / res['pallas']:.2f}x)")
  return rows


INT8_GEMM_SHAPES = {"3b.q": (2048, 2048), "3b.gateup": (2048, 22016), "3b.down": (11008, 2048),
                    "8k.up": (8192, 28672)}
INT8_GEMM_MS = (128, 256, 2048, 16384)


def int8_gemm_candidates(m, k, n):
  """Tile configs of the int8 GEMMs to time for one problem (the dispatcher's is added first):
  the Mosaic GPU kernel's and the Triton-backend kernel's."""
  G, MG = int8_gemm.GemmConfig, int8_gemm_mgpu.MgpuGemmConfig
  mosaic = [MG(128, 128, 128, 3), MG(128, 128, 128, 4), MG(128, 128, 64, 4), MG(128, 128, 64, 6),
            MG(128, 64, 128, 4), MG(64, 128, 128, 4), MG(64, 256, 64, 4), MG(128, 128, 128, 3, 4),
            MG(128, 128, 128, 3, 16)]
  mosaic = [c for c in mosaic if not m % c.tile_m and not n % c.cta_n and not k % c.tile_k]
  if m >= 1024:
    cands = [G(128, 128, 128, 1, 4, 3), G(128, 256, 128, 1, 8, 3), G(128, 128, 64, 1, 4, 4)]
  else:
    cands = [G(bm, bn, 128, s, 4, st) for bm in (64, 128) for bn in (64, 128) for s in (1, 2, 4, 8)
             for st in (3,)] + [G(64, 128, 128, 4, 4, 4), G(128, 128, 128, 2, 8, 3)]
  cands = [c for c in cands if not n % c.block_n and not k % (c.block_k * c.split_k)
           and m % c.block_m == 0]
  return mosaic + cands


def bench_int8_gemm(shapes, ms, log):
  """The whole op with a kept int8 weight (activation quantization included):
  `ternary_matmul(x, p, quantize_x=True, int8_weight=t)` through XLA (int8 GEMM with int32 out,
  then a scale pass) and through the Pallas int8 GEMM (scales fused, bf16 out) per tile config,
  each checked against XLA first; XLA's bf16 GEMM on the same weight as the baseline."""
  rows = []
  for name in shapes:
    k, n = INT8_GEMM_SHAPES[name]
    t, gamma = _ternary(jax.random.key(4), k, n)
    p = pack(t, gamma)
    ts = [t.T + jnp.int8(0) * i for i in range(copies(k * n))]  # [N, K], the kept layout
    wb = [t.astype(jnp.bfloat16) + 0 * i for i in range(copies(2 * k * n))]
    for m in ms:
      x = _nonzero_normal(jax.random.key(m), (m, k), jnp.bfloat16)
      est = 2 * m * k * n / 600e12 + k * n / 3e12

      def op(x, t, implementation, config=None):
        return ternary_matmul(x, p, quantize_x=True, implementation=implementation,
                              int8_weight=t, config=config)

      ref = np.asarray(op(x, ts[0], "xla"), np.float64)
      res = {"xla_bf16": timed(lambda x, w: x @ w, [(x, w) for w in wb], est),
             "ternary_xla_int8": timed(lambda x, t: op(x, t, "xla"), [(x, t) for t in ts], est)}
      chosen = config_lib.choose_int8_gemm(m, n, k, on_hopper())
      cands = [chosen] + [c for c in int8_gemm_candidates(m, k, n) if c != chosen]
      for c in cands:
        f = functools.partial(op, implementation="pallas", config=c)
        sec = checked_timing(f, (x, ts[0]), ref, [(x, t) for t in ts], est,
                             f"int8gemm {name} m={m} {c}", log)
        if sec is None:
          continue
        res[f"pallas {_short_gemm(c)}" + (" (default)" if c == chosen else "")] = sec
      base = res["xla_bf16"]
      for impl, sec in res.items():
        rows.append(dict(shape=name, k=k, n=n, m=m, impl=impl, us=sec * 1e6,
                         speedup_vs_bf16=base / sec, tops=2 * m * k * n / sec / 1e12))
      pallas = sorted((v, i) for i, v in res.items() if i.startswith("pallas"))
      log(f"  int8gemm {name:9s} m={m:5d} bf16={base * 1e6:8.1f}us ternary_xla_int8="
          f"{res['ternary_xla_int8'] * 1e6:8.1f}us ({base / res['ternary_xla_int8']:.2f}x)" +
          "".join(f"\n      {i}: {v * 1e6:8.1f}us ({base / v:.2f}x)" for v, i in pallas[:4]) +
          "".join(f"\n      {i}: {v * 1e6:8.1f}us ({base / v:.2f}x)" for v, i in pallas[4:]
                  if "default" in i))
  return rows


def _short_gemm(c):
  if isinstance(c, int8_gemm_mgpu.MgpuGemmConfig):
    return f"mosaic tm{c.tile_m} tn{c.tile_n} tk{c.tile_k} s{c.stages} snake{c.snake_width}"
  return (f"triton bm{c.block_m} bn{c.block_n} bk{c.block_k} split{c.split_k} w{c.num_warps} "
          f"s{c.num_stages}")


def _fmt(v):
  return "" if v is None else f"{v:.2f}"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--part", default="all",
                  choices=("decode", "large", "fused", "sweep", "gemv", "mgpu2bit", "ceiling",
                           "kernelonly", "int8gemm", "prologue", "waves", "all"))
  ap.add_argument("--shapes", default="", help="comma-separated shape names (default: all)")
  ap.add_argument("--ms", default="", help="comma-separated M values (default: by part)")
  ap.add_argument("--skip-checks", action="store_true")
  ap.add_argument("--tag", default="", help="output file suffix (default: the part)")
  ap.add_argument("--gemv-prologue", default="none", choices=("none", "norm", "swiglu"),
                  help="gemv: every call after the pre-norm with its residual, or SwiGLU")
  ap.add_argument("--profile", action="store_true",
                  help="decode, large: trace the int8 call and the bf16 GEMM, list their kernels")
  ap.add_argument("--impls", default="",
                  help="decode, large: time only these implementations (comma-separated, e.g. "
                       "xla_bf16,xla_int8,pallas_bf16,pallas_int8,pallas_int8_kept; default all)")
  args = ap.parse_args()
  unknown = set(args.impls.split(",")) - {""} - set(MATMUL_IMPLS)
  if unknown:
    ap.error(f"--impls: unknown implementation(s) {sorted(unknown)}; valid: "
             f"{', '.join(MATMUL_IMPLS)}")
  out_dir = os.environ.get("OUT", "out")
  os.makedirs(out_dir, exist_ok=True)
  tag = args.tag or args.part
  progress = open(os.path.join(out_dir, f"kernels_{tag}.log"), "w")

  def log(s):  # written as it comes, so a run cut short keeps what it measured
    print(s, flush=True)
    progress.write(s + "\n")
    progress.flush()

  dev = jax.devices()[0]
  meta = dict(device=dev.device_kind, date=datetime.date.today().isoformat(),
              jax=jax.__version__, jaxlib=jaxlib.__version__, part=args.part)
  log(json.dumps(meta))
  if not args.skip_checks and not check_correctness(log):
    log("CORRECTNESS FAILED: not timing")
    sys.exit(1)
  peaks = dict(read_tb_s=measure_read_bandwidth())
  if args.part in ("large", "all"):
    peaks["bf16_tflops"], peaks["int8_tops"] = measure_peak_matmul()
  log(f"peaks {peaks}")
  result = dict(meta=meta, peaks=peaks, spec=SPEC)
  shapes = [s for s in SHAPES if not args.shapes or s[0] in args.shapes.split(",")]
  sweep_shapes = [s for s in SWEEP_SHAPES if not args.shapes or s in args.shapes.split(",")]
  if args.part in ("sweep", "all"):
    result["sweep"] = [r for m in ([int(v) for v in args.ms.split(",")] if args.ms else (16,))
                       for r in bench_sweep(sweep_shapes, m, log)]
  if args.part in ("gemv", "all"):
    ms = [int(v) for v in args.ms.split(",")] if args.ms else (1, 2, 4)
    result["gemv"] = bench_gemv(sweep_shapes, ms, log, args.gemv_prologue)
  if args.part in ("mgpu2bit", "all"):
    ms = [int(v) for v in args.ms.split(",")] if args.ms else (16, 64, 128)
    result["mgpu_2bit"] = bench_mgpu_2bit(sweep_shapes, ms, log)
  if args.part in ("ceiling", "all"):
    result["ceiling"] = bench_ceiling(sweep_shapes, log, peaks)
  if args.part in ("ceiling", "kernelonly", "all"):
    result["kernel_only"] = [r for m in ([int(v) for v in args.ms.split(",")] if args.ms else (16,))
                             for r in bench_kernel_only(sweep_shapes, m, log)]
  if args.part in ("decode", "large", "all"):
    ms = dict(decode=DECODE_MS, large=LARGE_MS, all=DECODE_MS + LARGE_MS)[args.part]
    ms = [int(v) for v in args.ms.split(",")] if args.ms else ms
    rows = []
    for name, k, n in shapes:
      rows += bench_matmul(name, k, n, ms, log, peaks, args.profile,
                           only=set(args.impls.split(",")) - {""})
    result["matmul"] = rows
  if args.part in ("fused", "all"):
    result["fused"] = bench_fused(log)
  if args.part == "waves":
    result["waves"] = bench_waves([int(v) for v in args.ms.split(",")] if args.ms else (16,),
                                  log, peaks)
  if args.part in ("prologue", "all"):
    ms = [int(v) for v in args.ms.split(",")] if args.ms else (1, 16, 128)
    result["prologue"] = bench_prologue(ms, log)
  if args.part in ("int8gemm", "all"):
    names = [s for s in INT8_GEMM_SHAPES if not args.shapes or s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")] if args.ms else INT8_GEMM_MS
    result["int8_gemm"] = bench_int8_gemm(names, ms, log)
  with open(os.path.join(out_dir, f"kernels_{tag}.json"), "w") as f:
    json.dump(result, f, indent=1)
  progress.close()
  if "matmul" in result:
    md = ["| shape | K | N | M | impl | µs | vs bf16 | packed HBM frac | int8 peak frac |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in result["matmul"]:
      md.append(f"| {r['shape']} | {r['k']} | {r['n']} | {r['m']} | {r['impl']} | {r['us']:.1f} | "
                f"{r['speedup_vs_bf16']:.2f} | "
                f"{_fmt(r['packed_hbm_frac'])} | "
                f"{r['int8_peak_frac']:.3f} |")
    with open(os.path.join(out_dir, f"kernels_{tag}.md"), "w") as f:
      f.write("\n".join(md) + "\n")
    print("\nshape      M      bf16us  best-ternary        us   speedup  HBMfrac")
    by = {}
    for r in result["matmul"]:
      by.setdefault((r["shape"], r["m"]), []).append(r)
    for (s, m), rs in by.items():
      base = next((r for r in rs if r["impl"] == "xla_bf16"), None)
      tern = [r for r in rs if r["impl"].startswith(("pallas", "ternary"))]
      if not base or not tern:
        continue
      best = min(tern, key=lambda r: r["us"])
      print(f"{s:10s} {m:5d} {base['us']:9.1f}  {best['impl']:16s} {best['us']:9.1f} "
            f"{best['speedup_vs_bf16']:7.2f}  {best['packed_hbm_frac'] or 0:6.2f}")


if __name__ == "__main__":
  main()
