"""Decode attention against the KV cache on GPU: cuDNN's attention and the Pallas kernel (what bf16
models use) equal XLA's on rows of different lengths, with a cache size off every tile. The test suite runs on the
CPU (tests/conftest.py); on a GPU machine run `JAX_PLATFORMS=cuda python -m pytest
tests/nn/test_attention.py`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sbitnet.nn import KVCache
from sbitnet.nn.attention import Attention
from sbitnet.nn.linear import SparseBitLinear
from sbitnet.ops import rope_tables


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("implementation", ["cudnn", "pallas"])
def test_gpu_decode_attention_equals_xla(implementation):
  batch, slots, heads, kv_heads, head_dim = 3, 37, 4, 2, 64
  linear = functools.partial(SparseBitLinear, quant="none", act_bits=None, dtype=jnp.bfloat16)

  def layer(decode_implementation):
    return Attention(heads * head_dim, heads, kv_heads, head_dim, linear=linear, qkv_bias=True,
                     decode_implementation=decode_implementation, rngs=nnx.Rngs(0))

  keys = jax.random.split(jax.random.key(1), 3)
  shape = (batch, slots, kv_heads, head_dim)
  lengths = jnp.asarray([0, 11, slots - 1], jnp.int32)
  cache = KVCache(jax.random.normal(keys[0], shape, jnp.bfloat16),
                  jax.random.normal(keys[1], shape, jnp.bfloat16), lengths)
  x = jax.random.normal(keys[2], (batch, 1, heads * head_dim), jnp.bfloat16)
  cos, sin = rope_tables(lengths[:, None], head_dim, 10000.0)
  outs = [jax.jit(lambda a, c: a.with_cache(x, cos, sin, c))(layer(impl), cache)
          for impl in (implementation, "xla")]
  (got, got_cache), (want, want_cache) = outs
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=2e-2, atol=2e-2)
  np.testing.assert_array_equal(np.asarray(got_cache.keys), np.asarray(want_cache.keys))
