"""Tile choices for the Pallas ternary matmul, from the shape alone (static under jit)."""

from __future__ import annotations

from sbitnet.kernels.ternary_matmul.pack import TILE_K
from sbitnet.kernels.ternary_matmul.pallas_triton import Config

DECODE_MAX_M = 64
# Programs wanted per launch: about four waves on a 132-SM H100/H200, so that each SM has several
# programs' loads in flight; split-K supplies them when N alone is too narrow.
TARGET_PROGRAMS = 528
MIN_TILES_PER_SPLIT = 2


def block_n_for(n: int, largest: int = 128) -> int:
  """The largest power of two in [16, largest] dividing n (the caller pads n to a multiple of 16)."""
  b = largest
  while n % b:
    b //= 2
  return b


def split_for(k_tiles: int, programs: int) -> int:
  """Split-K factor: enough programs for TARGET_PROGRAMS, at least MIN_TILES_PER_SPLIT tiles each."""
  want = -(-TARGET_PROGRAMS // programs)
  return max(1, min(want, k_tiles // MIN_TILES_PER_SPLIT))


def choose(m: int, n: int, kp: int, int8: bool) -> Config:
  """Config for `x [m, kp] × codes [kp / 4, n]`; n must be a multiple of 16."""
  if m <= DECODE_MAX_M:
    block_m = max(16, 1 << (m - 1).bit_length())
    block_n = block_n_for(n)
    programs = (n // block_n) * (-(-m // block_m))
    return Config(block_m=block_m, block_n=block_n, split_k=split_for(kp // TILE_K, programs),
                  num_warps=4, num_stages=4)
  return Config(block_m=128, block_n=block_n_for(n), split_k=1, num_warps=8 if int8 else 4,
                num_stages=3)
