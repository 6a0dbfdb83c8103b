"""The pure train step: gradient accumulation equals one big batch."""

import jax
import numpy as np
from flax import nnx

from sbitnet.config import resolved_model
from sbitnet.models import DecoderLM
from sbitnet.sharding import make_mesh
from sbitnet.train import schedules
from sbitnet.train.optimizer import make_optimizer
from sbitnet.train.state import create_train_state
from sbitnet.train.step import make_eval_step, make_train_step
from tests.train.helpers import tiny_config


def test_grad_accumulation_matches_one_batch(tmp_path):
  cfg = tiny_config(str(tmp_path))
  model_cfg = resolved_model(cfg.model, 258)
  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
  optimizer = make_optimizer(cfg.train)
  tokens = np.random.default_rng(0).integers(0, 258, (8, 33), dtype=np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  graphdef, state, _ = create_train_state(
      lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(0)), optimizer, mesh)

  def train_once(accum):
    return jax.jit(make_train_step(graphdef, optimizer, schedules.learning_rate(cfg.train), accum,
                                   cfg.train.loss_chunk))(state, batch)

  # 4 micro-batches of 2 rows against 1 of 8: the scan runs the same code for any other count
  (ref_state, ref_metrics), (accum_state, metrics) = train_once(1), train_once(4)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(accum_state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Evaluation splits its batch the same way (so it fits where training does): same sums.
  whole = jax.jit(make_eval_step(graphdef, cfg.train.loss_chunk))(state.params, batch)
  split = jax.jit(make_eval_step(graphdef, cfg.train.loss_chunk, 4))(state.params, batch)
  np.testing.assert_allclose(split[0], whole[0], rtol=1e-5)
  assert float(split[1]) == float(whole[1]) == 8 * 32
