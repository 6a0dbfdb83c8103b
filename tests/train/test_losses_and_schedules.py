import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.config import TrainConfig
from sbitnet.train.loss import chunked_cross_entropy
from sbitnet.train.schedules import learning_rate, weight_decay


def full_cross_entropy(hidden, head, targets):
  logits = hidden @ head
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.take_along_axis(logp, targets[..., None], axis=-1))


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_chunked_cross_entropy_equals_full(chunk):
  key = jax.random.split(jax.random.key(0), 3)
  hidden = jax.random.normal(key[0], (2, 7, 16))
  head = jax.random.normal(key[1], (16, 33))
  targets = jax.random.randint(key[2], (2, 7), 0, 33)
  total, count = chunked_cross_entropy(hidden, head, targets, chunk)
  np.testing.assert_allclose(total, full_cross_entropy(hidden, head, targets), rtol=1e-5)
  assert count == 14
  g = jax.grad(lambda h, w: chunked_cross_entropy(h, w, targets, chunk)[0], argnums=(0, 1))
  g_ref = jax.grad(lambda h, w: full_cross_entropy(h, w, targets), argnums=(0, 1))
  for a, b in zip(g(hidden, head), g_ref(hidden, head)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_loss_backward_multiplies_in_bf16_and_accumulates_the_head_in_f32():
  """DESIGN: matmuls in bf16. JAX's transpose of a bf16 dot with f32 output would promote both
  backward matmuls to f32; the loss's own VJP keeps them bf16 and the head gradient f32."""
  key = jax.random.split(jax.random.key(1), 3)
  hidden = jax.random.normal(key[0], (2, 9, 16)).astype(jnp.bfloat16)
  head = jax.random.normal(key[1], (16, 40))
  targets = jax.random.randint(key[2], (2, 9), 0, 40)
  grad = jax.grad(lambda h, w: chunked_cross_entropy(h, w, targets, 4)[0], argnums=(0, 1))
  jaxpr = jax.make_jaxpr(grad)(hidden, head)

  def dots(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        yield tuple(v.aval.dtype for v in eqn.invars)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from dots(sub)

  found = list(dots(jaxpr.jaxpr))
  assert len(found) >= 3 and all(d == (jnp.bfloat16, jnp.bfloat16) for d in found), found
  d_hidden, d_head = grad(hidden, head)
  assert d_hidden.dtype == jnp.bfloat16 and d_head.dtype == jnp.float32
  ref = jax.grad(lambda h, w: full_cross_entropy(h.astype(jnp.float32),
                                                 w.astype(jnp.bfloat16).astype(jnp.float32),
                                                 targets), argnums=(0, 1))(hidden, head)
  np.testing.assert_allclose(np.asarray(d_hidden, np.float32), ref[0], rtol=0.05, atol=0.05)
  np.testing.assert_allclose(d_head, ref[1], rtol=0.05, atol=0.05)


def test_ignored_targets():
  hidden = jnp.ones((1, 4, 8))
  head = jnp.eye(8)
  targets = jnp.array([[1, -1, 2, -1]])
  total, count = chunked_cross_entropy(hidden, head, targets, 3)
  assert count == 2
  np.testing.assert_allclose(total, 2 * np.log(8), rtol=1e-6)


def test_cosine_schedule():
  cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
  lr = learning_rate(cfg)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(lr(100)), 1e-4, rtol=1e-5)
  assert float(weight_decay(cfg)(99)) == pytest.approx(cfg.weight_decay)


def test_two_stage_schedule():
  cfg = TrainConfig(steps=100, lr=1.5e-3, warmup_steps=10, schedule="two_stage",
                    stage2_lr_ratio=2 / 3, min_lr_ratio=0.0, weight_decay=0.1)
  lr, wd = learning_rate(cfg), weight_decay(cfg)
  np.testing.assert_allclose(float(lr(10)), 1.5e-3, rtol=1e-6)
  np.testing.assert_allclose(float(lr(50)), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(float(lr(100)), 0.0, atol=1e-9)
  assert float(wd(49)) == pytest.approx(0.1) and float(wd(50)) == 0.0
