"""The ops under jit, grad, vmap, lax.scan, jax.checkpoint and shard_map."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from sbitnet.ops import bitlinear, mask_flip_rate, nm_mask, sparse_ternary_weight

W = jax.random.normal(jax.random.key(0), (64, 16)) * 0.02
X = jax.random.normal(jax.random.key(1), (4, 64))


def loss(w, x):
  return jnp.sum(bitlinear(x, w, 6, 8) ** 2)


def test_jit_and_grad_match_eager():
  np.testing.assert_allclose(jax.jit(loss)(W, X), loss(W, X), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(W, X), jax.grad(loss)(W, X), rtol=1e-5)


def test_vmap_over_weights():
  ws = jnp.stack([W, -W, 2 * W])
  batched = jax.vmap(lambda w: sparse_ternary_weight(w, 2, 4))(ws)
  for i in range(3):
    np.testing.assert_allclose(batched[i], sparse_ternary_weight(ws[i], 2, 4), rtol=1e-6)
  g = jax.vmap(jax.grad(loss), in_axes=(0, None))(ws, X)
  np.testing.assert_allclose(g[1], jax.grad(loss)(-W, X), rtol=1e-5, atol=1e-6)


def test_scan_over_layers_and_checkpoint():
  ws = jax.random.normal(jax.random.key(2), (2, 16, 16)) * 0.3

  def body(h, w):
    return jax.checkpoint(lambda h, w: jnp.tanh(bitlinear(h, w, 2, 4)))(h, w), None

  def scanned(ws):
    return jnp.sum(jax.lax.scan(body, X[:, :16], ws)[0])

  def unrolled(ws):
    h = X[:, :16]
    for i in range(2):
      h = jnp.tanh(bitlinear(h, ws[i], 2, 4))
    return jnp.sum(h)

  # jitted (compiled whole, not op by op); test_jit_and_grad_match_eager checks the eager ops
  np.testing.assert_allclose(jax.jit(scanned)(ws), jax.jit(unrolled)(ws), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.grad(scanned))(ws), jax.jit(jax.grad(unrolled))(ws),
                             rtol=1e-4, atol=1e-7)


def test_shard_map_with_global_gamma():
  mesh = Mesh(np.array(jax.devices()[:4]), ("tensor",))

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(None, "tensor"),),
                     out_specs=P(None, "tensor"))
  def sharded(w):
    return sparse_ternary_weight(w, 6, 8, axis_name="tensor")

  np.testing.assert_allclose(sharded(W), sparse_ternary_weight(W, 6, 8), rtol=1e-6)


def test_flip_rate():
  a = nm_mask(W.at[:4, 0].set(jnp.array([1.0, 1.0, 0.0, 0.0])), 2, 4)
  b = nm_mask(W.at[:4, 0].set(jnp.array([0.0, 0.0, 1.0, 1.0])), 2, 4)
  assert mask_flip_rate(a, a) == 0
  np.testing.assert_allclose(mask_flip_rate(a, b), 4 / W.size)
