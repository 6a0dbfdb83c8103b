import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.sharding import Mesh, PartitionSpec as P

from sbitnet.kernels import pack, ternary_matmul, unpack_int8
from sbitnet.kernels.ternary_matmul import config as config_lib
from sbitnet.kernels.ternary_matmul import (gemv_dp4a, int8_gemm, int8_gemm_mgpu, pallas_triton,
                                           two_bit_mgpu)
from sbitnet.kernels.ternary_matmul.gemv_dp4a import GemvConfig
from sbitnet.kernels.ternary_matmul.int8_gemm import GemmConfig
from sbitnet.kernels.ternary_matmul.int8_gemm_mgpu import MgpuGemmConfig
from sbitnet.kernels.ternary_matmul.pallas_triton import Config
from sbitnet.kernels.ternary_matmul.two_bit_mgpu import TwoBitMgpuConfig
from sbitnet.ops import RMSNormPrologue, SwiGLUPrologue, absmax_int8
from tests.kernels.base import PATTERNS, activations, rel_err, ternary

# (M, K, N): decode and large-M configs; K and N off the tile sizes (K tile 128, N tile 16..128).
SHAPES = [(1, 128, 128), (5, 200, 48), (16, 384, 256), (40, 256, 100), (70, 128, 64)]


def _oracle(x, t, gamma, quantize_x):
  """float64 NumPy: x @ t * gamma, with x first quantized per token when quantize_x."""
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  if quantize_x:
    q, s = absmax_int8(jnp.asarray(x, jnp.float32))
    x = np.asarray(q, np.float64) * np.asarray(s, np.float64)
  return x @ np.asarray(t, np.float64) * float(gamma)


def _case(seed, m, k, n, pattern):
  kx, kw = jax.random.split(jax.random.key(seed))
  t = ternary(kw, k, n, pattern)
  gamma = jnp.float32(0.037)
  return activations(kx, (m, k)), t, gamma, pack(t, gamma)


def _grid():
  """Every pattern on two shapes and every shape on 6:8 by default; the rest under -m slow."""
  for shape in SHAPES:
    for pattern in PATTERNS:
      fast = pattern == (6, 8) or shape in SHAPES[1:3]
      yield pytest.param(*shape, pattern, id=f"{shape}-{pattern[0]}:{pattern[1]}",
                         marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("quantize_x", [False, True], ids=["bf16", "int8"])
@pytest.mark.parametrize("m,k,n,pattern", list(_grid()))
def test_pallas_matches_xla_and_oracle(m, k, n, pattern, quantize_x):
  if pattern[1] and k % pattern[1]:
    pytest.skip("m does not divide k")
  x, t, gamma, p = _case(m * k + n, m, k, n, pattern)
  ref = ternary_matmul(x, p, quantize_x=quantize_x, implementation="xla")
  out = ternary_matmul(x, p, quantize_x=quantize_x, implementation="pallas")
  assert out.shape == (m, n) and out.dtype == x.dtype
  assert np.isfinite(np.asarray(out, np.float32)).all()
  oracle = _oracle(x, t, gamma, quantize_x)
  assert rel_err(ref, oracle) < 1e-2  # the bf16 output rounding
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             rtol=1e-2, atol=1e-2 * np.abs(oracle).max())


@pytest.mark.parametrize("quantize_x", [False, True], ids=["bf16", "int8"])
@pytest.mark.parametrize("config", [Config(block_m=16, block_n=32, split_k=3),
                                    Config(block_m=32, block_n=32, split_k=1),
                                    Config(block_m=64, block_n=16, split_k=6),
                                    Config(block_m=16, block_n=96 // 3, split_k=4),
                                    Config(block_m=16, block_n=48, split_k=2, swap_ab=True),
                                    Config(block_m=64, block_n=32, split_k=1, swap_ab=True)],
                         ids=str)
def test_every_tile_is_written_into_a_poisoned_output(config, quantize_x):
  """M = 20 is off every block_m and K = 712 off the 128-row tiles: x is not padded, so the
  kernel must mask rows and columns past the ends, and write exactly the M real rows."""
  m, k, n = 20, 712, 96
  x, _, _, p = _case(3, m, k, n, (2, 8))
  ref = ternary_matmul(x, p, quantize_x=quantize_x, implementation="xla")
  dtype = jnp.float32 if config.split_k > 1 else x.dtype
  poison = jnp.full((config.split_k, m, n), jnp.nan, dtype)
  out = ternary_matmul(x, p, quantize_x=quantize_x, implementation="pallas", config=config,
                       out_init=poison)
  assert np.isfinite(np.asarray(out, np.float32)).all()
  assert rel_err(out, ref) < 1e-2
  if quantize_x and config.split_k == 1:  # exact int32 sums, the same scales in the same order
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


def test_poison_catches_unwritten_tiles():
  def first_half(x_ref, o_ref):  # writes only the first of its two column blocks
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  spec = pl.BlockSpec((16, 32), lambda j: (0, j))
  out = pallas_triton.call(first_half, [jnp.ones((16, 64))], [spec], spec,
                           jax.ShapeDtypeStruct((16, 64), jnp.float32), grid=(2,), config=Config(),
                           interpret=True, out_init=jnp.full((16, 64), jnp.nan))
  assert (out[:, :32] == 1).all() and np.isnan(out[:, 32:]).all()
  m, k, n = 16, 256, 96
  x, _, _, p = _case(4, m, k, n, (2, 4))
  with pytest.raises(ValueError, match="block_n=64"):
    ternary_matmul(x, p, implementation="pallas", config=Config(block_n=64))
  with pytest.raises(ValueError, match="block_m=8"):
    ternary_matmul(x, p, implementation="pallas", config=Config(block_m=8, block_n=32))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_float_plane_bit_trick_gives_one_plus_code_over_four(dtype):
  """NumPy model of `_plane`'s PTX for floats (prmt, shift, lop3) on every byte value."""
  one, top = pallas_triton._FLOAT_MAGIC[jnp.dtype(dtype)]
  words = np.random.default_rng(0).integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
  words = np.concatenate([words, np.arange(256, dtype=np.uint32) * 0x01010101])
  packed = words.view(np.uint8).reshape(-1, 4)

  def prmt(a, selector):  # byte i of the result = byte (selector nibble i) of a
    return sum(((a >> np.uint32(8 * ((selector >> 4 * i) & 3))) & np.uint32(0xFF))
               << np.uint32(8 * i) for i in range(4))

  for q in range(4):
    d = top - 2 * q
    lanes = []
    for sel in pallas_triton._LANE_SELECTORS:
      r = prmt(words, sel)
      r = r << np.uint32(d) if d >= 0 else r >> np.uint32(-d)
      lanes.append((r & np.uint32((3 << top) * 0x10001)) | np.uint32(one * 0x10001))
    got = np.stack(lanes, 1).view(np.uint16).reshape(-1, 4).view(jnp.dtype(dtype))
    want = 1 + ((packed >> 2 * q) & 3) / 4
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


def test_leading_dims_split_gammas_and_float16():
  x = activations(jax.random.key(5), (2, 3, 256), jnp.float16)
  t = ternary(jax.random.key(6), 256, 48, (6, 8))
  p = pack(t, jnp.array([0.5, 2.0], jnp.float32), split=(16, 32))
  out = ternary_matmul(x, p, implementation="pallas")
  assert out.shape == (2, 3, 48) and out.dtype == jnp.float16
  ref = np.asarray(x, np.float64) @ np.asarray(t, np.float64) * np.repeat([0.5, 2.0], [16, 32])
  assert rel_err(out, ref) < 2e-3


@pytest.mark.parametrize("m,quantize_x", [(4, False), (1, True)], ids=["mma-bf16", "gemv-int8"])
def test_works_under_jit_and_shard_map(m, quantize_x):
  mesh = Mesh(np.array(jax.devices()[:8]), ("tensor",))
  x, _, _, p = _case(7, m, 256, 8 * 16, (6, 8))
  spec = dataclasses.replace(p, codes=P("tensor", None), scale=P("tensor"))
  f = jax.jit(jax.shard_map(
      lambda x, p: ternary_matmul(x, p, quantize_x=quantize_x, implementation="pallas"),
      mesh=mesh, in_specs=(P(), spec), out_specs=P(None, "tensor"), check_vma=False))
  ref = ternary_matmul(x, p, quantize_x=quantize_x, implementation="xla")
  np.testing.assert_allclose(np.asarray(f(x, p), np.float32), np.asarray(ref, np.float32),
                             rtol=1e-2, atol=1e-2)


def test_dispatcher_uses_xla_on_cpu():
  x, _, _, p = _case(8, 3, 128, 32, (2, 4))
  np.testing.assert_array_equal(ternary_matmul(x, p), ternary_matmul(x, p, implementation="xla"))


def test_errors_name_the_problem():
  x, _, _, p = _case(9, 2, 128, 16, (2, 4))
  with pytest.raises(ValueError, match="last axis must be 128"):
    ternary_matmul(x[:, :64], p)
  with pytest.raises(ValueError, match="floating-point"):
    ternary_matmul(x.astype(jnp.int8), p)
  with pytest.raises(ValueError, match="bfloat16/float16"):
    ternary_matmul(x.astype(jnp.float32), p, implementation="pallas")
  with pytest.raises(ValueError, match="implementation='triton'"):
    ternary_matmul(x, p, implementation="triton")
  with pytest.raises(ValueError, match="version 1 is not supported.*reads version 2"):
    ternary_matmul(x, dataclasses.replace(p, version=1))
  with pytest.raises(ValueError, match="scale"):
    ternary_matmul(x, dataclasses.replace(p, scale=p.scale.astype(jnp.bfloat16)))
  with pytest.raises(ValueError, match=r"int8_weight must be int8 \[16, 128\].*int8 \[128, 16\]"):
    ternary_matmul(x, p, quantize_x=True, int8_weight=unpack_int8(p).T)
  with pytest.raises(ValueError, match="selects a Pallas kernel's tiles; implementation='xla'"):
    ternary_matmul(x, p, implementation="xla", config=Config())


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
@pytest.mark.parametrize("quantize_x", [False, True], ids=["bf16", "int8"])
def test_no_rows_give_an_empty_product(implementation, quantize_x):
  _, _, _, p = _case(9, 2, 128, 16, (2, 4))
  y = ternary_matmul(jnp.ones((0, 3, 128), jnp.bfloat16), p, quantize_x=quantize_x,
                     implementation=implementation)
  assert y.shape == (0, 3, 16) and y.dtype == jnp.bfloat16


def test_kept_int8_weight_is_used_and_gives_the_same_product():
  x, _, _, p = _case(11, 70, 256, 48, (6, 8))
  y = ternary_matmul(x, p, quantize_x=True, implementation="xla")
  kept = unpack_int8(p)
  np.testing.assert_array_equal(
      ternary_matmul(x, p, quantize_x=True, implementation="xla", int8_weight=kept), y)
  np.testing.assert_array_equal(
      ternary_matmul(x, p, quantize_x=True, implementation="xla", int8_weight=-kept), -y)


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("config", [None, GemvConfig(block_n=16, block_w=16),
                                    GemvConfig(block_n=1, block_w=128),
                                    GemvConfig(block_n=4, block_w=1024, num_warps=8),
                                    GemvConfig(block_n=32, block_w=64, num_warps=8),
                                    GemvConfig(block_n=16, block_w=16, quantizes_x=True),
                                    GemvConfig(block_n=4, block_w=128, quantizes_x=True)], ids=str)
def test_gemv_writes_every_column_and_equals_xla(config, m):
  """The dp4a GEMV (interpret mode: the same byte products in jnp), on x quantized ahead or by
  the kernel itself: K = 712 is off the 128-row tiles and off every block_w of words (masked
  tail), N = 96 padded to 96 (16) by the wrapper; exact int32 sums and XLA's scale order, so
  bit-identical; the output buffer is poisoned."""
  k, n = 712, 96
  x, _, _, p = _case(17 + m, m, k, n, (2, 8))
  ref = np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="xla"), np.float32)
  c = config or config_lib.choose_gemv(m, n, k)
  if n % c.block_n:
    with pytest.raises(ValueError, match=f"block_n={c.block_n} must divide N"):
      ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config)
    return
  poison = jnp.full((m, n), jnp.nan, x.dtype)
  out = ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=c,
                       out_init=poison)
  assert out.shape == (m, n) and out.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(out, np.float32), ref)
  if config is None and config_lib.gemv_wins(m):  # the dispatcher's own choice
    np.testing.assert_array_equal(
        np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                                  out_init=poison), np.float32), ref)


def test_gemv_dp4a_model_is_the_byte_dot_product():
  """The jnp model of `dp4a.u32.s32` (what interpret mode runs) on random words: unsigned code
  bytes times signed x bytes, summed into the accumulator."""
  rng = np.random.default_rng(0)
  words = rng.integers(-2**31, 2**31, (4, 64), dtype=np.int64).astype(np.int32)
  xs = rng.integers(-2**31, 2**31, (4, 64), dtype=np.int64).astype(np.int32)
  planes = gemv_dp4a._planes(jnp.asarray(words[0]), asm=False)
  got = gemv_dp4a._dp4a(planes, list(jnp.asarray(xs)), jnp.full((64,), 7, jnp.int32), asm=False)
  u8 = words[0].view(np.uint8).reshape(64, 4).astype(np.int64)
  want = np.full(64, 7, np.int64)
  for q in range(4):
    want += (((u8 >> (2 * q)) & 3) * xs[q].view(np.int8).reshape(64, 4)).sum(1)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_gemv_lowers_for_the_gpu_and_checks_its_inputs():
  """The inline-PTX variant (interpret mode runs jnp instead) lowered to Triton IR on the CPU."""
  args = [jax.ShapeDtypeStruct((3, 768), jnp.int8), jax.ShapeDtypeStruct((3,), jnp.float32),
          jax.ShapeDtypeStruct((3,), jnp.int32), jax.ShapeDtypeStruct((96, 192), jnp.uint8),
          jax.ShapeDtypeStruct((96,), jnp.float32)]
  matmul = functools.partial(gemv_dp4a.matmul, config=GemvConfig(block_n=8, block_w=64),
                             out_dtype=jnp.bfloat16, asm=True)
  text = jax.jit(matmul).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and "dp4a.u32.s32" in text
  x, _, _, p = _case(20, 1, 128, 48, (2, 4))
  with pytest.raises(ValueError, match="dp4a GEMV config: it needs quantize_x=True"):
    ternary_matmul(x, p, implementation="pallas", config=GemvConfig())
  with pytest.raises(ValueError, match="block_w=48 be powers of two"):
    ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                   config=GemvConfig(block_n=16, block_w=48))
  with pytest.raises(ValueError, match="block_w >= 8"):
    ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                   config=GemvConfig(block_n=16, block_w=4))
  with pytest.raises(ValueError, match="x must be int8"):
    gemv_dp4a.matmul(jnp.zeros((1, 128), jnp.float32), jnp.ones(1), jnp.zeros(1, jnp.int32),
                     p.codes, p.scale, config=GemvConfig(block_n=16), out_dtype=jnp.bfloat16,
                     interpret=True)
  with pytest.raises(ValueError, match=r"\"planes\" layout, \[M, Kp\] with Kp = 128 .* got x "
                                       r"\(1, 100\)"):
    gemv_dp4a.matmul(jnp.zeros((1, 100), jnp.int8), jnp.ones(1), jnp.zeros(1, jnp.int32),
                     p.codes, p.scale, config=GemvConfig(block_n=16), out_dtype=jnp.bfloat16,
                     interpret=True)
  with pytest.raises(ValueError, match="x must be float"):
    gemv_dp4a.matmul_quantizing(jnp.zeros((1, 128), jnp.int8), p.codes, p.scale,
                                config=GemvConfig(block_n=16), out_dtype=jnp.bfloat16,
                                interpret=True)


def test_quantizing_gemv_lowers_for_the_gpu_with_its_norm():
  """The GEMV that quantizes x itself, with an RMS norm and residual, lowered to Triton IR."""
  k, n = 712, 96
  x = jax.ShapeDtypeStruct((1, k), jnp.bfloat16)
  args = [jax.ShapeDtypeStruct((n, 192), jnp.uint8), jax.ShapeDtypeStruct((n,), jnp.float32)]
  pro = RMSNormPrologue(jax.ShapeDtypeStruct((k,), jnp.float32), 1e-6, x)
  matmul = functools.partial(gemv_dp4a.matmul_quantizing, config=GemvConfig(block_n=8, block_w=64,
                                                                            quantizes_x=True),
                             out_dtype=jnp.bfloat16, asm=True)
  text = jax.jit(matmul).trace(x, *args, pro).lower(lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and "dp4a.u32.s32" in text and "cvt.rni" in text


@pytest.mark.parametrize("k,n", [(896, 128), (896, 896), (2048, 2048), (2048, 11008),
                                 (11008, 2048), (8192, 28672), (200, 48)])
def test_gemv_configs_tile_the_model_shapes(k, n):
  n16 = -(-n // 16) * 16
  for m in (1, 2):
    c = config_lib.choose_gemv(m, n16, k)
    assert n16 % c.block_n == 0 and c.block_n * c.block_w >= 32 * c.num_warps
    assert (n16 // c.block_n >= config_lib.GEMV_MIN_PROGRAMS or c.block_n == 1
            or n16 <= config_lib.GEMV_NARROW_N)
    assert c.block_n * m <= config_lib.GEMV_MAX_ROWS


def test_dispatcher_takes_the_gemv_where_it_measured_faster():
  """One or two int8 rows (8192x28672: 32 code rows per program at one row, as measured; narrow
  layers 128-word steps, four rows in 1024-word steps at long K; short narrow rows quantized by
  the GEMV itself at one row, ahead at two); the MMA kernel from 3 rows."""
  assert config_lib.gemv_wins(1) and config_lib.gemv_wins(2) and not config_lib.gemv_wins(3)
  assert config_lib.choose_gemv(1, 28672, 8192) == GemvConfig(block_n=32, block_w=64)
  assert config_lib.choose_gemv(2, 28672, 8192).block_n == 16
  assert config_lib.choose_gemv(1, 2048, 11008) == GemvConfig(block_n=4, block_w=1024,
                                                              num_warps=8)
  assert config_lib.choose_gemv(1, 2560, 2048) == GemvConfig(block_n=16, block_w=128,
                                                             quantizes_x=True)
  assert config_lib.choose_gemv(2, 2560, 2048) == GemvConfig(block_n=4, block_w=64)
  assert not config_lib.choose_gemv(1, 22016, 2048).quantizes_x
  assert not config_lib.choose_gemv(1, 28672, 8192).quantizes_x


@pytest.mark.parametrize("config", [GemmConfig(block_m=16, block_n=32, block_k=64, split_k=3),
                                    GemmConfig(block_m=64, block_n=16, block_k=128, split_k=1),
                                    GemmConfig(block_m=32, block_n=48, block_k=32, split_k=2)],
                         ids=str)
def test_int8_gemm_writes_every_tile_and_equals_xla(config):
  """M, N and K off the tiles (padded by the wrapper); the kept int8 weight is the one used."""
  m, k, n = 70, 200, 96
  x, _, _, p = _case(12, m, k, n, (6, 8))
  ref = ternary_matmul(x, p, quantize_x=True, implementation="xla")
  mp = -(-m // config.block_m) * config.block_m
  dtype = jnp.float32 if config.split_k > 1 else x.dtype
  poison = jnp.full((config.split_k, mp, n), jnp.nan, dtype)
  out = ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config,
                       out_init=poison)
  assert out.shape == (m, n) and out.dtype == x.dtype
  assert np.isfinite(np.asarray(out, np.float32)).all()
  # Exact int32 accumulation and the same scale order: equal up to the split-K float32 sum.
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             rtol=1e-2 if config.split_k > 1 else 0, atol=1e-6)
  kept = -unpack_int8(p)
  np.testing.assert_allclose(
      np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config,
                                int8_weight=kept), np.float32),
      -np.asarray(ref, np.float32), rtol=1e-2 if config.split_k > 1 else 0, atol=1e-6)


def test_int8_gemm_is_the_pallas_path_above_decode_sizes_and_checks_its_inputs():
  m, k, n = config_lib.DECODE_MAX_M + 1, 256, 48
  x, _, _, p = _case(13, m, k, n, (2, 4))
  kept = unpack_int8(p)
  # Above M = 64 the Pallas path with quantize_x multiplies the int8 weight (the kept one here).
  np.testing.assert_allclose(
      np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                                int8_weight=-kept), np.float32),
      -np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="xla"), np.float32),
      atol=1e-6)
  # Without a kept int8 weight the 2-bit kernel serves up to TWO_BIT_MAX_M rows: its output
  # buffer ([split_k, M, N16], poisoned) is the one the result comes from.
  c = config_lib.choose(m, n, 256, int8=True)
  assert m <= config_lib.TWO_BIT_MAX_M and c.swap_ab
  poison = jnp.full((c.split_k, m, n), jnp.nan, jnp.float32 if c.split_k > 1 else x.dtype)
  out = ternary_matmul(x, p, quantize_x=True, implementation="pallas", out_init=poison)
  assert rel_err(out, ternary_matmul(x, p, quantize_x=True, implementation="xla")) < 1e-2
  with pytest.raises(ValueError, match="int8 GEMM config"):
    ternary_matmul(x, p, implementation="pallas", config=GemmConfig())
  with pytest.raises(ValueError, match="block_n=32 must divide N"):
    ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                   config=GemmConfig(block_n=32))
  with pytest.raises(ValueError, match="does not tile"):
    int8_gemm.matmul(jnp.zeros((64, 96), jnp.int8), jnp.zeros((64, 96), jnp.int8),
                     jnp.ones(64), jnp.ones(64), config=GemmConfig(64, 64, 64), out_dtype=jnp.float32,
                     interpret=True)


@pytest.mark.parametrize("m", [65, 128, 1000, 1024, 16384])
@pytest.mark.parametrize("k,n", [(896, 128), (2048, 2048), (2048, 22016), (11008, 2048),
                                 (8192, 28672), (200, 48)])
def test_int8_gemm_configs_tile_the_model_shapes(m, k, n):
  for hopper in (False, True):
    c = config_lib.choose_int8_gemm(m, -(-n // 16) * 16, k, hopper)
    if isinstance(c, MgpuGemmConfig):  # the wrapper pads to the tiles; the tiles must be valid
      assert hopper and m >= config_lib.MOSAIC_INT8_GEMM_MIN_M
      int8_gemm_mgpu.check_tiles(c.tile_m, c.cta_n, c.tile_k, c)
      continue
    assert -(-n // 16) * 16 % c.block_n == 0 and c.block_m % 16 == 0 and c.block_k % 32 == 0
    assert c.split_k == 1 or -(-k // c.block_k) >= c.split_k * config_lib.MIN_TILES_PER_SPLIT


def test_dispatcher_takes_the_int8_gemm_where_it_measured_faster():
  for hopper in (False, True):
    assert config_lib.int8_gemm_wins(4096, n=22016, k=2048, hopper=hopper)  # 3B gate/up prefill
    assert not config_lib.int8_gemm_wins(128, n=2048, k=2048, hopper=hopper)  # decode: XLA
  # On 8192x28672 cuBLAS via XLA beat the Triton-backend GEMM, not the Mosaic GPU one.
  assert not config_lib.int8_gemm_wins(4096, n=28672, k=8192, hopper=False)
  assert config_lib.int8_gemm_wins(4096, n=28672, k=8192, hopper=True)
  # The Mosaic GEMM serves from 512 rows (large-batch decode with kept int8 weights).
  assert config_lib.int8_gemm_wins(512, n=2048, k=2048, hopper=True)
  assert not config_lib.int8_gemm_wins(512, n=2048, k=2048, hopper=False)
  # 128x256 CTA tiles where they fill the SMs, 128x128 where they would not.
  assert config_lib.choose_int8_gemm(2048, 2048, 2048, hopper=True).tile_n == 128
  assert config_lib.choose_int8_gemm(1024, 2048, 2048, hopper=True).tile_n == 64


@pytest.mark.parametrize("config", [
    pytest.param(MgpuGemmConfig(64, 64, 64, stages=2, snake_width=2), marks=pytest.mark.slow),
    MgpuGemmConfig(128, 64, 32, stages=3, snake_width=1)], ids=str)
def test_mosaic_int8_gemm_writes_every_tile_and_equals_xla(config):
  """Mosaic GPU interpret mode (its output starts as NaN, so an unwritten tile fails): M, N and K
  off the tiles, more output tiles than the 4 simulated SMs, the kept int8 weight used."""
  m, k, n = 150, 200, 200
  x, _, _, p = _case(14, m, k, n, (6, 8))
  ref = np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="xla"), np.float32)
  out = ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config)
  assert out.shape == (m, n) and out.dtype == x.dtype
  assert np.isfinite(np.asarray(out, np.float32)).all()
  # Exact int32 accumulation, then the same float32 scale products as XLA's path.
  np.testing.assert_array_equal(np.asarray(out, np.float32), ref)
  np.testing.assert_array_equal(
      np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config,
                                int8_weight=-unpack_int8(p)), np.float32), -ref)


@pytest.mark.parametrize("sharded", [False, True], ids=["plain", "shard_map"])
def test_mosaic_int8_gemm_lowers_for_the_gpu(sharded):
  """Interpret mode cannot read a transposed shared-memory operand, so it runs the kernel with t
  pre-transposed; the GPU variant (t [N, K] viewed transposed, as int8 wgmma needs) is lowered
  here through Mosaic GPU's layout inference and dialect lowering, which catch most errors that
  would otherwise first show on the GPU. Also under shard_map over N (8 shards), which interpret
  mode cannot simulate (it runs one device)."""
  m, k, n = 512, 384, 8 * 256
  args = [jax.ShapeDtypeStruct((m, k), jnp.int8), jax.ShapeDtypeStruct((n, k), jnp.int8),
          jax.ShapeDtypeStruct((m,), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32)]
  matmul = functools.partial(int8_gemm_mgpu.matmul, config=MgpuGemmConfig(),
                             out_dtype=jnp.bfloat16, num_sms=132)
  if sharded:
    mesh = Mesh(np.array(jax.devices()[:8]), ("tensor",))
    matmul = jax.shard_map(matmul, mesh=mesh, in_specs=(P(), P("tensor"), P(), P("tensor")),
                           out_specs=P(None, "tensor"), check_vma=False)
  text = jax.jit(matmul).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1


def test_mosaic_int8_gemm_checks_its_tiles():
  x, _, _, p = _case(15, 8, 64, 32, (2, 4))
  with pytest.raises(ValueError, match="int8 GEMM config"):
    ternary_matmul(x, p, implementation="pallas", config=MgpuGemmConfig())
  with pytest.raises(ValueError, match="does not tile M=128, N=256, K=128"):
    int8_gemm_mgpu.matmul(jnp.zeros((128, 128), jnp.int8), jnp.zeros((256, 128), jnp.int8),
                          jnp.ones(128), jnp.ones(256), config=MgpuGemmConfig(tile_m=96),
                          out_dtype=jnp.bfloat16, num_sms=4, interpret=True)
  with pytest.raises(ValueError, match="out_init does not apply"):
    ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=MgpuGemmConfig(),
                   out_init=jnp.zeros((1, 8, 32)))


def test_mosaic_int8_gemm_refuses_a_gpu_without_wgmma(monkeypatch):
  """On a non-Hopper GPU an explicit Mosaic config fails with a clear error before lowering."""
  from sbitnet.kernels.ternary_matmul import api
  x, _, _, p = _case(16, 8, 64, 32, (2, 4))
  monkeypatch.setattr(api.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(api, "on_hopper", lambda: False)
  with pytest.raises(ValueError, match="needs a Hopper GPU"):
    ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=MgpuGemmConfig())


@pytest.mark.parametrize("config", [
    pytest.param(TwoBitMgpuConfig(tile_n=64, warpgroups=1, tile_m=16, stages=2, split_k=2),
                 marks=pytest.mark.slow),
    TwoBitMgpuConfig(tile_n=64, warpgroups=2, tile_m=32),
    TwoBitMgpuConfig(tile_n=64, warpgroups=2, tile_m=32, stages=3, prefetch_scales=True)],
    ids=str)
def test_mosaic_2bit_kernel_writes_every_tile_and_equals_xla(config):
  """Mosaic GPU interpret mode (int32 output not initialised by the kernel, so an unwritten tile
  fails the exact comparison): M, N and K off the tiles (several x row tiles, N padded to the
  CTA rows, a last K step past the codes), split K, the epilogue's vectors loaded before the
  pipeline, bit-identical to XLA's int8 path."""
  m, k, n = 37, 1896, 200
  x, _, _, p = _case(17, m, k, n, (6, 8))
  ref = np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="xla"), np.float32)
  out = ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config)
  assert out.shape == (m, n) and out.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(out, np.float32), ref)


def test_mosaic_2bit_planes_are_the_codes_place_values():
  """`_plane` with bitwise ops only: 4**q·c for planes 0-2 and -64·t for plane 3, every byte."""
  codes = jnp.arange(256, dtype=jnp.int32).astype(jnp.uint8)
  fields = [(np.arange(256) >> 2 * q) & 3 for q in range(4)]
  as_int8 = jax.lax.bitcast_convert_type(codes, jnp.int8)
  for q, field in enumerate(fields):
    plane = np.asarray(two_bit_mgpu._plane(as_int8, q), np.int32)
    valid = field < 3  # code 3 never occurs
    expected = 4 ** q * field if q < 3 else -64 * (field - 1)
    np.testing.assert_array_equal(plane[valid], expected[valid])


@pytest.mark.parametrize("m,k,config", [
    (16, 8192, TwoBitMgpuConfig(tile_n=128, warpgroups=2)),
    (16, 8192, TwoBitMgpuConfig(tile_n=128, warpgroups=2, stages=3, prefetch_scales=True)),
    (128, 11008, TwoBitMgpuConfig(tile_n=64, warpgroups=1, split_k=11))], ids=str)
def test_mosaic_2bit_kernel_lowers_for_the_gpu(m, k, config):
  """The GPU variant (planes as wgmma's register A operand, x's tile read through a transposed
  view; interpret mode runs neither) lowered for CUDA on the CPU through Mosaic GPU's layout
  inference and dialect lowering: the fused epilogue (its vectors loaded after the pipeline or
  before it), and split K over code rows of 2752 bytes (64-byte swizzle) with two row tiles of
  x."""
  n = 2048
  tile_m, rows = config.rows(m)
  args = [jax.ShapeDtypeStruct((rows, -(-k // 512) * 512), jnp.int8),
          jax.ShapeDtypeStruct((n, k // 4), jnp.uint8), jax.ShapeDtypeStruct((rows,), jnp.int32),
          jax.ShapeDtypeStruct((rows,), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32)]
  kernel = functools.partial(two_bit_mgpu.matmul_codes, config=config, out_dtype=jnp.bfloat16)
  text = jax.jit(kernel).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @mosaic_gpu") == 1


def test_mosaic_2bit_kernel_checks_its_inputs():
  x, _, _, p = _case(18, 8, 256, 128, (2, 4))
  with pytest.raises(ValueError, match="Mosaic GPU 2-bit kernel config: it needs quantize_x"):
    ternary_matmul(x, p, implementation="pallas", config=TwoBitMgpuConfig())
  with pytest.raises(ValueError, match="split_k must divide its 3 steps"):
    two_bit_mgpu.check_tiles(16, 128, 1536, TwoBitMgpuConfig(split_k=2))
  with pytest.raises(ValueError, match="tile_m a multiple of 16"):
    two_bit_mgpu.check_tiles(16, 128, 512, TwoBitMgpuConfig(tile_m=128))
  with pytest.raises(ValueError, match="out_init does not apply"):
    ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=TwoBitMgpuConfig(),
                   out_init=jnp.zeros((1, 8, 128)))


def test_dispatcher_takes_the_mosaic_2bit_kernel_where_it_measured_faster(monkeypatch):
  """On a Hopper GPU (faked: the config is recorded, nothing runs) int8 decode calls go to the
  Mosaic 2-bit kernel where it measured faster (by N, K and M) and to the Triton kernel
  otherwise; its CTA rows divide N or it is not taken."""
  from sbitnet.kernels.ternary_matmul import api
  assert config_lib.mgpu_2bit_wins(4, n=28672, k=8192)
  assert not config_lib.mgpu_2bit_wins(4, n=22016, k=2048)
  assert config_lib.mgpu_2bit_wins(16, n=22016, k=2048)
  assert config_lib.mgpu_2bit_wins(16, n=11008, k=2048)
  assert not config_lib.mgpu_2bit_wins(16, n=2560, k=2048)
  assert config_lib.mgpu_2bit_wins(64, n=2560, k=2048)
  assert not config_lib.mgpu_2bit_wins(64, n=2048, k=11008)
  assert config_lib.mgpu_2bit_wins(128, n=2048, k=11008)
  assert not config_lib.mgpu_2bit_wins(1, n=28672, k=8192)  # one row: the dp4a GEMV
  assert not config_lib.mgpu_2bit_wins(256, n=22016, k=2048)  # not measured there
  assert config_lib.choose_mgpu_2bit(16, 22016, 2048) == TwoBitMgpuConfig(tile_n=128,
                                                                          warpgroups=2)
  assert config_lib.choose_mgpu_2bit(16, 28672, 8192) == TwoBitMgpuConfig(tile_n=128,
                                                                          warpgroups=2, stages=3)
  assert config_lib.choose_mgpu_2bit(64, 28672, 8192) == TwoBitMgpuConfig(tile_n=64, warpgroups=2)
  assert config_lib.choose_mgpu_2bit(16, 11008, 2048) == TwoBitMgpuConfig(tile_n=64, warpgroups=2)
  assert config_lib.choose_mgpu_2bit(128, 2048, 2048) == TwoBitMgpuConfig(tile_n=64, warpgroups=1)
  assert config_lib.choose_mgpu_2bit(128, 2000, 2048) is None

  taken = []
  monkeypatch.setattr(api, "off_gpu", lambda: False)
  monkeypatch.setattr(api, "on_hopper", lambda: True)
  monkeypatch.setattr(api, "_two_bit_mgpu", lambda x, p, config, *_: taken.append(config))
  monkeypatch.setattr(api.pallas_triton, "matmul", lambda *_, config, **__: taken.append(config))
  monkeypatch.setattr(api, "_product", lambda parts, m, n: None)
  monkeypatch.setattr(api, "quantize_rows", lambda x, *_, **__: (x, None, None))
  x, _, _, p = _case(19, 128, 256, 128, (2, 4))
  api._pallas(x, p, True, x.dtype, None, None, None)
  api._pallas(x[:16], p, True, x.dtype, None, None, None)
  assert taken == [TwoBitMgpuConfig(tile_n=64, warpgroups=1), config_lib.choose(16, 128, 256, True)]


def test_kept_int8_weights_take_the_mosaic_2bit_kernel_up_to_its_rows():
  """With a kept int8 weight, calls over DECODE_MAX_M rows go to an int8 GEMM, except on Hopper
  where the Mosaic 2-bit kernel serves them (up to MGPU_2BIT_MAX_M rows, CTA rows dividing N)."""
  serves = config_lib.two_bit_serves
  assert serves(64, 2048, 2048, True, True, hopper=False)
  assert not serves(128, 2048, 2048, True, True, hopper=False)
  assert serves(128, 2048, 2048, True, True, hopper=True)
  assert serves(128, 2048, 11008, True, True, hopper=True)
  assert not serves(128, 2000, 2048, True, True, hopper=True)  # no Mosaic tiling of N
  assert not serves(256, 2048, 2048, True, True, hopper=True)
  assert serves(512, 2048, 2048, True, False, hopper=False)  # streamed codes, no int8 copy
  assert not serves(128, 2048, 2048, False, True, hopper=True)  # bf16 activations


@pytest.mark.parametrize("prologue", ["rms_norm+residual", "swiglu"])
@pytest.mark.parametrize("m,config", [
    (1, GemvConfig(block_n=16, block_w=16)), (5, Config(block_m=16, block_n=32, split_k=2)),
    (20, TwoBitMgpuConfig(tile_n=64, warpgroups=1, tile_m=16))],
    ids=["gemv", "triton", "mosaic"])
def test_prologue_fused_into_the_quantization_equals_xla_applying_it_first(m, config, prologue):
  """Each 2-bit kernel with the prologue computed in its activation-quantization kernel
  (interpret mode) against the XLA path, which applies it to x before quantizing (from its
  float32 result): the same float32 math, so bit-identical; x has leading dims [2, m], as in a
  model. The int8 GEMM path applies it in XLA too."""
  k, n = 712, 96
  _, _, _, p = _case(23 + m, m, k, n, (6, 8))
  x = activations(jax.random.key(m), (2, m, 2 * k if prologue == "swiglu" else k))
  pro = (SwiGLUPrologue() if prologue == "swiglu" else
         RMSNormPrologue(jnp.linspace(0.5, 2.0, k, dtype=jnp.float32), 1e-6,
                         activations(jax.random.key(7), x.shape)))
  ref = ternary_matmul(x, p, quantize_x=True, implementation="xla", prologue=pro)
  np.testing.assert_array_equal(
      ternary_matmul(pro(x, jnp.float32), p, quantize_x=True,
                     implementation="xla").astype(x.dtype), ref)
  out = ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config,
                       prologue=pro)
  assert out.shape == (2, m, n)
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))
  gemm = ternary_matmul(x, p, quantize_x=True, implementation="pallas", prologue=pro,
                        config=GemmConfig(block_m=16, block_n=32, block_k=64))
  np.testing.assert_array_equal(np.asarray(gemm, np.float32), np.asarray(ref, np.float32))


@pytest.mark.parametrize("prologue", ["norm", "norm+residual", "swiglu"])
@pytest.mark.parametrize("m", [1, 3])
def test_quantizing_gemv_computes_the_prologue_as_xla_does(m, prologue):
  """The GEMV that quantizes x itself, with the pre-norm or the SwiGLU gating computed by every
  program: bit-identical to XLA applying it first (and, at one row, the dispatcher's choice at
  K = 712, which quantizes in the GEMV)."""
  k, n = 712, 96
  _, _, _, p = _case(31 + m, m, k, n, (6, 8))
  x = activations(jax.random.key(m), (m, 2 * k if prologue == "swiglu" else k))
  pro = (SwiGLUPrologue() if prologue == "swiglu" else
         RMSNormPrologue(jnp.linspace(0.5, 2.0, k, dtype=jnp.float32), 1e-6,
                         activations(jax.random.key(7), x.shape) if "residual" in prologue
                         else None))
  ref = np.asarray(ternary_matmul(x, p, quantize_x=True, implementation="xla", prologue=pro),
                   np.float32)
  for config in (GemvConfig(block_n=8, block_w=32, quantizes_x=True),) + (None,) * (m == 1):
    out = ternary_matmul(x, p, quantize_x=True, implementation="pallas", config=config,
                         prologue=pro, out_init=jnp.full((m, n), jnp.nan, x.dtype))
    np.testing.assert_array_equal(np.asarray(out, np.float32), ref)


def test_prologue_errors_name_the_problem():
  x, _, _, p = _case(9, 2, 128, 16, (2, 4))
  with pytest.raises(ValueError, match=r"last axis must be 256 with SwiGLUPrologue"):
    ternary_matmul(x, p, prologue=SwiGLUPrologue())
  with pytest.raises(ValueError, match="prologue=.*is not valid; pass one of"):
    ternary_matmul(x, p, prologue=jax.nn.relu)
  with pytest.raises(ValueError, match=r"residual has shape \(2, 64\); it must be shaped like x"):
    ternary_matmul(x, p, prologue=RMSNormPrologue(jnp.ones(128), 1e-6, x[:, :64]))
  with pytest.raises(ValueError, match=r"the RMS norm's scale has shape \(64,\).*needs \[128\]"):
    ternary_matmul(x, p, quantize_x=True, implementation="pallas",
                   prologue=RMSNormPrologue(jnp.ones(64), 1e-6))
  with pytest.raises(ValueError, match=r"the RMS norm's scale has shape \(64,\).*needs \[128\]"):
    ternary_matmul(x, p, quantize_x=True, implementation="xla",
                   prologue=RMSNormPrologue(jnp.ones(64), 1e-6))


def test_dispatcher_fuses_the_prologues_where_they_measured_faster():
  """The norm always; SwiGLU (one program per row reading gate and up) from 128 rows only."""
  assert all(config_lib.prologue_fused(False, m) for m in (1, 16, 128, 512))
  assert [config_lib.prologue_fused(True, m) for m in (1, 16, 64, 128, 512)] == [
      False, False, False, True, True]
