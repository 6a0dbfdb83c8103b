"""Tile choices for the Pallas ternary matmul, from the shape alone (static under jit).

Measured on an H200 with format-v2 (K-major) codes (docs/kernels.md, the layout sweep), kernel
alone: at M <= 16 block_n = 128 with ~900 programs (split-K, >= 4 K tiles per split; bf16 on
N >= WIDE_N: block_n = 256) was the best or within 5 % of it on 8192→28672 and 2048→22016 (bf16
with block_n = 256 on the narrower 3B layers: up to 20 % slower, whole op); at M = 64-128
block_m = 64 with swap-AB (weights as the MMA's M operand), ~224 programs and block_n = 256 on
N >= WIDE_N (128 below) was best or within 1 % (2-3x the format-v1 kernel). One int8 row goes to
the dp4a GEMV instead (`gemv_wins`, `choose_gemv`; 1.1-1.4x the MMA kernel at one row), and so
do two rows. Above
`two_bit_max_m` int8 activations go to an int8 GEMM: `choose_int8_gemm` and `int8_gemm_wins`
below (on Hopper the Mosaic GPU kernel, elsewhere the Triton-backend one).
"""

from __future__ import annotations

from sbitnet.kernels.ternary_matmul.gemv_dp4a import GemvConfig
from sbitnet.kernels.ternary_matmul.int8_gemm import GemmConfig
from sbitnet.kernels.ternary_matmul.int8_gemm_mgpu import MgpuGemmConfig
from sbitnet.kernels.ternary_matmul.pack import TILE_K
from sbitnet.kernels.ternary_matmul.pallas_triton import Config
from sbitnet.kernels.ternary_matmul.two_bit_mgpu import TwoBitMgpuConfig

# The 2-bit kernel serves M up to DECODE_MAX_M; int8 activations on a weight whose unpacked int8
# copy is not kept also up to TWO_BIT_MAX_M, where the alternative unpacks the codes every call.
DECODE_MAX_M = 64
TWO_BIT_MAX_M = 512
# Int8 activations of one or two rows go to the dp4a GEMV (`gemv_dp4a`) instead. With x plane-major
# from `quantize_rows` its two-row case beat the MMA kernel on every measured layer (H200, whole
# op: 8192x28672 25.6 vs 34.4 us, 2048x22016 10.5 vs 13.6, 11008x2048 9.3 vs 11.5; at four rows
# the Mosaic kernel wins on 8192x28672, 27.2 vs 35.1; docs/kernels.md). Rows per program:
# GEMV_MAX_ROWS / M at most.
GEMV_MAX_M = 2
GEMV_MAX_ROWS = 32
GEMV_MIN_PROGRAMS = 600
GEMV_NARROW_N = 4096
GEMV_LONG_K = 8192
# Narrow layers up to this K: the GEMV quantizes x itself (each program the whole row, with its
# RMS norm), one launch per call instead of two, with this many code rows per program (few
# programs: each pays for the quantization).
GEMV_QUANTIZING_MAX_K = 2048
GEMV_QUANTIZING_ROWS = 16
# The activation quantization computes a prologue itself (`quantize_rows`) rather than after XLA
# computes it: the RMS norm always (3B pre-norm with its residual, K = 2048, H200: 4.2 vs 5.1 us
# at 1 row, 5.1 vs 5.5 at 16, 5.7 vs 6.3 at 128), SwiGLU from this M (K = 11008: 8.3 vs 9.3 us
# at 128 rows, but 6.5 vs 5.8 at 1 and 8.0 vs 7.1 at 16, where one program per row reads the
# 44 KB of gate and up alone and XLA's elementwise kernel spreads them over the SMs).
SWIGLU_FUSED_MIN_M = 128
# Programs wanted per launch (several waves on a 132-SM H100/H200, so that each SM has several
# programs' loads in flight); split-K supplies them when N alone is too narrow.
TARGET_PROGRAMS = 896
MIN_TILES_PER_SPLIT = 4
WIDE_N = 16384
INT8_GEMM_MAX_WEIGHT = 1 << 26
# From this M the Pallas int8 GEMM beat XLA's int8 GEMM + scale pass (H200 sweeps): the Triton
# kernel from 1024 rows, the Mosaic GPU one (Hopper) from 512.
INT8_GEMM_MIN_M = 1024
MOSAIC_INT8_GEMM_MIN_M = 512
# With fewer 128×256 CTA tiles (the wide config's) than this (~3/4 of an H100/H200's 132 SMs) the
# Mosaic GEMM takes 128×128 CTA tiles instead.
MOSAIC_MIN_WIDE_TILES = 96


def block_n_for(n: int, largest: int = 128) -> int:
  """The largest power of two in [16, largest] dividing n (the caller pads n to a multiple of 16)."""
  b = largest
  while n % b:
    b //= 2
  return b


def split_for(k_tiles: int, programs: int, target: int = TARGET_PROGRAMS) -> int:
  """Split-K factor: about `target` programs, at least MIN_TILES_PER_SPLIT K tiles each."""
  return max(1, min(-(-target // programs), k_tiles // MIN_TILES_PER_SPLIT))


def two_bit_max_m(int8: bool, int8_weight_kept: bool) -> int:
  """The largest M the dispatcher sends to the 2-bit kernels on any shape (`two_bit_serves`)."""
  return TWO_BIT_MAX_M if int8 and not int8_weight_kept else DECODE_MAX_M


def choose(m: int, n: int, kp: int, int8: bool) -> Config:
  """Config for `x [m, kp] × codes [n, kp / 4]`; n must be a multiple of 16."""
  if m <= 16:
    block_n = block_n_for(n, 256 if n >= WIDE_N and not int8 else 128)
    return Config(block_m=16, block_n=block_n,
                  split_k=split_for(kp // TILE_K, n // block_n), num_warps=4, num_stages=3)
  block_n = block_n_for(n, 256 if n >= WIDE_N else 128)
  programs = (n // block_n) * -(-m // 64)
  return Config(block_m=64, block_n=block_n,
                split_k=split_for(kp // TILE_K, programs, TARGET_PROGRAMS // 4), num_warps=4,
                num_stages=3, swap_ab=True)


def gemv_wins(m: int) -> bool:
  """Whether the dp4a GEMV beat the 2-bit MMA kernel for int8 x with m rows (H200)."""
  return m <= GEMV_MAX_M


def prologue_fused(glu: bool, m: int) -> bool:
  """Whether `quantize_rows` computes the prologue of an m-row call (SwiGLU if `glu`, else the
  RMS norm) itself: where it measured faster than XLA's kernel for it ahead (H200)."""
  return not glu or m >= SWIGLU_FUSED_MIN_M


def choose_gemv(m: int, n: int, k: int) -> GemvConfig:
  """Config of the dp4a GEMV for m rows of x `[m, k]` and codes `[n, Kp / 4]`; n a multiple of 16.
  H200 sweeps at M = 1 (docs/kernels.md). Wide layers: the most code rows per program (up to
  32 / m: the accumulators grow with both) that still leave GEMV_MIN_PROGRAMS programs
  (8192→28672 32 rows, 896 programs; 2048→11008 16, 688), 64-word steps, and at least 128 words
  per step (one per thread of the 4 warps). Narrow layers (n <= GEMV_NARROW_N): 128-word steps;
  up to k = GEMV_QUANTIZING_MAX_K, at one row, the kernel that quantizes x itself with 16 code
  rows per program (2048→2048 4.0 vs 4.6 us, with the pre-norm 5.1 vs 5.3; 2048→2560 with the
  pre-norm 5.5 vs 5.5), at two rows x quantized ahead and four code rows in 64-word steps
  (4.8 vs 5.3-5.7 us quantizing), four code rows per program in 1024-word steps with 8 warps when k >= GEMV_LONG_K
  (11008→2048: 8.3 vs 9.3 us with one row in 128-word steps, 11.1 with two in 64: more code
  bytes in flight per program), else four in 128-word steps. Code rows per program are powers of
  two. The dispatcher sends it one or two rows (`gemv_wins`); more are for explicit configs."""
  def rows_at_most(limit: int) -> int:  # a power of two, with GEMV_MAX_ROWS accumulators at most
    return 1 << (max(1, min(limit, GEMV_MAX_ROWS // m)).bit_length() - 1)

  if n <= GEMV_NARROW_N and k <= GEMV_QUANTIZING_MAX_K:
    if m > 1:
      return GemvConfig(block_n=rows_at_most(4), block_w=64, num_warps=4)
    return GemvConfig(block_n=rows_at_most(GEMV_QUANTIZING_ROWS), block_w=128, num_warps=4,
                      quantizes_x=True)
  if n <= GEMV_NARROW_N:
    if k >= GEMV_LONG_K:
      return GemvConfig(block_n=rows_at_most(4), block_w=1024, num_warps=8)
    return GemvConfig(block_n=rows_at_most(4), block_w=128, num_warps=4)
  block_n = rows_at_most(GEMV_MAX_ROWS)
  while block_n > 1 and n // block_n < GEMV_MIN_PROGRAMS:
    block_n //= 2
  return GemvConfig(block_n=block_n, block_w=max(64, 128 // block_n), num_warps=4)


# The Mosaic GPU 2-bit kernel (Hopper, int8 activations) was measured up to this M (H200 sweeps).
MGPU_2BIT_MAX_M = 128
# From this many weights (8192×28672) it won from 4 rows.
MGPU_2BIT_LARGE_WEIGHT = 1 << 27
# From this N (2048→11008 measured) its CTAs take two warpgroups of code rows, and it won from 16
# rows once the activations were quantized in one pass (tenth session).
MGPU_2BIT_MID_N = 8192
# Narrower layers with K up to MGPU_2BIT_SHORT_K (q/k/v, o): it won from this many rows
# (measured at 16 and 64); with longer K (down) only above DECODE_MAX_M.
MGPU_2BIT_NARROW_MIN_M = 64
MGPU_2BIT_SHORT_K = 4096


def mgpu_2bit_wins(m: int, n: int, k: int) -> bool:
  """Whether the Mosaic GPU 2-bit kernel beat the Triton-backend one for int8 x of m rows on a
  Hopper GPU (H200 sweeps, whole op, docs/kernels.md): on 8192×28672 from M = 4 (1.14x at 4, 1.4x
  at 16, 1.6x at 64-128); on the 3B gate/up projection (N = 22016) from M = 16 (1.1x at 16, 1.2x
  at 64, 1.4x at 128; 0.86x at 4); on 2048→11008 from M = 16 (1.08x at 16, 1.33x at 64; about
  even at 4); on the narrow 3B layers (N <= 2560) q/k/v and o from M = 64 (1.07-1.09x; 0.96x at
  16) and down (K = 11008) above 64 (0.87x at 64 unsplit); all of them 1.1-1.3x at 128."""
  if m > MGPU_2BIT_MAX_M:
    return False
  if k * n >= MGPU_2BIT_LARGE_WEIGHT:
    return m >= 4
  if n >= MGPU_2BIT_MID_N:
    return m >= 16
  return m >= MGPU_2BIT_NARROW_MIN_M if k <= MGPU_2BIT_SHORT_K else m > DECODE_MAX_M


def choose_mgpu_2bit(m: int, n: int, k: int) -> TwoBitMgpuConfig | None:
  """Config of the Mosaic GPU 2-bit kernel, or None where its CTA rows do not divide n (the
  caller then takes the Triton kernel rather than padding the codes). H200 sweeps: from
  MGPU_2BIT_MID_N two warpgroups per CTA, on wide layers (N >= WIDE_N) 128 code rows each up to
  32 rows of x (four accumulators of [128, rows] fit), otherwise 64 (on 2048→11008 64 rows made
  twice the CTAs of 128: 10.5 vs 11.7 µs at M = 16); narrow layers one warpgroup of 64 rows; 4
  stages, no K split (best or within 3 % wherever the kernel wins, except 2048→2048 at M = 64,
  where a 4-way split was 3 % faster); 3 stages on 8192×28672-sized weights with 128 code rows
  (3-4 % faster at M = 4 and 16, H100, sixteenth and eighteenth sessions)."""
  wide = n >= WIDE_N and m <= 32
  config = TwoBitMgpuConfig(tile_n=128 if wide else 64,
                            warpgroups=2 if n >= MGPU_2BIT_MID_N else 1,
                            stages=3 if wide and k * n >= MGPU_2BIT_LARGE_WEIGHT else 4)
  return config if n % config.cta_n == 0 else None


def two_bit_serves(m: int, n: int, k: int, int8: bool, int8_weight_kept: bool,
                   hopper: bool) -> bool:
  """Whether the dispatcher sends an m-row call on a `[k, n]` weight to a 2-bit kernel rather
  than an int8 GEMM or XLA: up to `two_bit_max_m` rows, and with a kept int8 weight also where the
  Mosaic GPU 2-bit kernel serves (Hopper, int8 activations, up to MGPU_2BIT_MAX_M rows): H200,
  3B-shaped model at decode batch 128, 35.7k tok/s through it against 28.7k with kept int8
  weights through XLA's int8 GEMM (docs/inference.md)."""
  if m <= two_bit_max_m(int8, int8_weight_kept):
    return True
  return (int8 and int8_weight_kept and hopper and mgpu_2bit_wins(m, n, k)
          and choose_mgpu_2bit(m, n, k) is not None)


def choose_int8_gemm(m: int, n: int, k: int, hopper: bool) -> GemmConfig | MgpuGemmConfig:
  """Config of the int8 GEMM for `x [m, k] × t [n, k]`; the caller pads. From the H200 sweeps
  (docs/kernels.md). On Hopper from MOSAIC_INT8_GEMM_MIN_M rows the Mosaic GPU kernel: 128×128
  tiles per warpgroup (CTA 128×256), K step 128, 3 stages (best or within 2 % of 9 configs on the
  Qwen-3B layers and 8192×28672 at M = 512-16384) unless that leaves most SMs idle (Qwen-3B
  q/o and down at M <= 1024), then 128×64 per warpgroup with 4 stages (1.3x the wide tiles
  at M = 1024). Otherwise the Triton-backend kernel: at M >= 1024 128×128×128 tiles with 4
  warps were best or within 5 % on every Qwen-3B layer; below, narrow layers want 64-wide tiles
  and a 2-way K split, wide ones 128 rows and no split."""
  if hopper and m >= MOSAIC_INT8_GEMM_MIN_M:
    wide = MgpuGemmConfig(tile_m=128, tile_n=128, tile_k=128, stages=3)
    if -(-m // wide.tile_m) * -(-n // wide.cta_n) >= MOSAIC_MIN_WIDE_TILES:
      return wide
    return MgpuGemmConfig(tile_m=128, tile_n=64, tile_k=128, stages=4)
  if m >= INT8_GEMM_MIN_M:
    return GemmConfig(block_m=128, block_n=block_n_for(n, 128), block_k=128, split_k=1,
                      num_warps=4, num_stages=3)
  narrow = n <= 4096
  split = 2 if narrow and k >= 2 * 128 * MIN_TILES_PER_SPLIT else 1
  return GemmConfig(block_m=64 if narrow else 128, block_n=block_n_for(n, 64 if n < 24576 else 128),
                    block_k=128, split_k=split, num_warps=4, num_stages=3)


def int8_gemm_wins(m: int, n: int, k: int, hopper: bool) -> bool:
  """Whether the Pallas int8 GEMM beat XLA's (int8 GEMM + scale pass) in the H200 sweeps: the
  Mosaic GPU kernel from MOSAIC_INT8_GEMM_MIN_M rows (Qwen-3B layers: 1.5x XLA's on gate/up at
  M = 512-1024, 0.98-1.12x on q/o and down; all four layers 1.1-1.6x at M = 2048 and 16384); the
  Triton-backend one (used off Hopper) from INT8_GEMM_MIN_M rows on weights up to
  INT8_GEMM_MAX_WEIGHT (Qwen-3B layers, 2-16 % faster; XLA's cuBLAS GEMM was faster on
  8192×28672 by 18-27 %)."""
  if hopper:
    return m >= MOSAIC_INT8_GEMM_MIN_M
  return m >= INT8_GEMM_MIN_M and k * n <= INT8_GEMM_MAX_WEIGHT
