"""Decode attention: the Pallas kernel (interpret mode on the CPU) against the XLA oracle, over
groups, head sizes, cache sizes off every tile, lengths from 0 to full, and parts of the cache."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from sbitnet.kernels import decode_attention
from sbitnet.kernels.decode_attention import pallas_triton
from sbitnet.kernels.decode_attention.api import choose_config, pallas_fits
from sbitnet.nn import KVCache, SparseBitLinear
from sbitnet.nn.attention import Attention
from sbitnet.ops import rope_tables
from tests.kernels.base import activations


def _inputs(batch, slots, heads, kv_heads, head_dim, lengths, dtype=jnp.bfloat16):
  keys = jax.random.split(jax.random.key(batch * slots + heads), 3)
  shape = (batch, slots, kv_heads, head_dim)
  qkv = activations(keys[0], (batch, (heads + 2 * kv_heads) * head_dim), dtype)
  lengths = jnp.asarray(lengths, jnp.int32)
  cos, sin = rope_tables(lengths, head_dim, 10000.0)
  return (qkv, activations(keys[1], shape, dtype), activations(keys[2], shape, dtype), lengths,
          cos, sin)


_SHAPES = [
    (4, 2, 64, 37, [0, 11, 36]),        # a group of 2; the last row fills the cache
    (16, 2, 128, 70, [69, 1]),          # the Qwen-3B group of 8
    (3, 3, 32, 50, [50, 17]),           # one query per kv head; a full cache (write clamped)
    (6, 2, 16, 33, [5]),                # a group of 3 (repeated to 16 rows); one sequence
]


@pytest.mark.parametrize("heads,kv_heads,head_dim,slots,lengths,block_s,splits", [
    (*shape, *tiles) for shape, many in zip(_SHAPES, [(32, 3), (16, 8), (16, 8), (32, 3)])
    for tiles in [(16, 1), many]])
def test_pallas_equals_xla(heads, kv_heads, head_dim, slots, lengths, block_s, splits):
  args = _inputs(len(lengths), slots, heads, kv_heads, head_dim, lengths)
  want = decode_attention(*args, n_heads=heads, implementation="xla")
  got = decode_attention(*args, n_heads=heads, implementation="pallas",
                         config=pallas_triton.Config(block_s=block_s, splits=splits))
  assert got[0].shape == want[0].shape and got[0].dtype == want[0].dtype
  np.testing.assert_allclose(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32),
                             rtol=2e-2, atol=1e-2)
  # RoPE of the new key and the write are bit for bit the oracle's; other slots are untouched.
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(want[2]))


def test_long_cache_in_many_parts_and_shared_rope_tables():
  """A cache of 700 slots in the dispatcher's parts, and cos/sin of one row broadcast to all."""
  qkv, keys, values, lengths, _, _ = _inputs(2, 700, 4, 1, 64, [650, 699])
  cos, sin = rope_tables(jnp.asarray([3]), 64, 10000.0)
  config = choose_config(2, 1, 700)
  assert config.splits > 1
  want = decode_attention(qkv, keys, values, lengths, cos, sin, n_heads=4, implementation="xla")
  got = decode_attention(qkv, keys, values, lengths, cos, sin, n_heads=4, implementation="pallas")
  np.testing.assert_allclose(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32),
                             rtol=2e-2, atol=1e-2)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))


def test_attention_layer_decodes_through_the_kernel():
  """`Attention.with_cache` at one token: the Pallas path equals the XLA path (output and cache)."""
  heads, kv_heads, head_dim = 4, 2, 32
  linear = functools.partial(SparseBitLinear, quant="none", act_bits=None, dtype=jnp.bfloat16)
  args = _inputs(2, 24, heads, kv_heads, head_dim, [0, 9])
  cache = KVCache(args[1], args[2], args[3])
  x = activations(jax.random.key(5), (2, 1, heads * head_dim))
  outs = []
  for implementation in ("pallas", "xla"):
    layer = Attention(heads * head_dim, heads, kv_heads, head_dim, linear=linear, qkv_bias=True,
                      decode_implementation=implementation, rngs=nnx.Rngs(0))
    outs.append(layer.with_cache(x, args[4][:, None], args[5][:, None], cache))
  (got, got_cache), (want, want_cache) = outs
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=2e-2, atol=2e-2)
  np.testing.assert_array_equal(np.asarray(got_cache.keys), np.asarray(want_cache.keys))
  np.testing.assert_array_equal(np.asarray(got_cache.values), np.asarray(want_cache.values))


def test_under_jit_and_shard_map_over_sequences():
  """Sequences sharded over 8 devices (data parallel decode): each shard runs the kernel on its
  rows and cache; the result equals the unsharded oracle."""
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  args = _inputs(8, 40, 4, 2, 32, [0, 3, 7, 12, 20, 27, 33, 39])
  f = jax.jit(jax.shard_map(
      lambda *a: decode_attention(*a, n_heads=4, implementation="pallas",
                                  config=pallas_triton.Config(block_s=16, splits=2)),
      mesh=mesh, in_specs=(P("data"),) * 6, out_specs=(P("data"),) * 3, check_vma=False))
  got = f(*args)
  want = decode_attention(*args, n_heads=4, implementation="xla")
  np.testing.assert_allclose(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32),
                             rtol=2e-2, atol=1e-2)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(want[2]))


@pytest.mark.parametrize("splits", [1, 4])
def test_lowers_for_the_gpu(splits):
  """Lowered to Triton IR on the CPU at the Qwen-3B decode shape, the cache aliased in place."""
  sd = jax.ShapeDtypeStruct
  f = functools.partial(pallas_triton.decode_attention, n_heads=16,
                        config=pallas_triton.Config(splits=splits))
  cache = sd((1, 528, 2, 128), jnp.bfloat16)
  text = jax.jit(f).trace(sd((1, 20 * 128), jnp.bfloat16), cache, cache, sd((1,), jnp.int32),
                          sd((1, 128), jnp.float32), sd((1, 128), jnp.float32)).lower(
                              lowering_platforms=("cuda",)).as_text()
  assert "xla.gpu.triton" in text and "output_operand_aliases" in text


def test_dispatch_and_errors():
  args = _inputs(2, 8, 4, 2, 16, [1, 2])
  if jax.default_backend() != "gpu":  # off the GPU the default is the oracle
    for a, b in zip(decode_attention(*args, n_heads=4),
                    decode_attention(*args, n_heads=4, implementation="xla")):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="implementation='triton' is not valid"):
    decode_attention(*args, n_heads=4, implementation="triton")
  with pytest.raises(ValueError, match="n_heads=3 must be a multiple of the cache's kv_heads=2"):
    decode_attention(*args, n_heads=3)
  with pytest.raises(ValueError, match=r"qkv must be .* = \[2, 128\] .* got \(2, 127\)"):
    decode_attention(args[0][:, :127], *args[1:], n_heads=4)
  with pytest.raises(ValueError, match=r"lengths must be integer \[B\] = \[2\]"):
    decode_attention(*args[:3], args[3][:1], *args[4:], n_heads=4)
  with pytest.raises(ValueError, match=r"cos must be \[B or 1, head_dim\] = \[2, 16\]"):
    decode_attention(*args[:4], args[4][:, :8], args[5], n_heads=4)
  f32 = [a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a for a in args]
  with pytest.raises(ValueError, match="a bfloat16 or float16 cache .* got qkv float32"):
    decode_attention(*f32, n_heads=4, implementation="pallas")
  for bad in (pallas_triton.Config(splits=0), pallas_triton.Config(block_s=8),
              pallas_triton.Config(num_warps=3)):
    with pytest.raises(ValueError, match="not a valid decode-attention config"):
      decode_attention(*args, n_heads=4, implementation="pallas", config=bad)
  huge = jax.ShapeDtypeStruct((2, 2**22, 2, 256), jnp.bfloat16)  # 2^32 elements, never allocated
  assert not pallas_fits(args[0], huge) and pallas_fits(args[0], args[1])
