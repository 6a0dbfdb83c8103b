"""A tiny model, its train state on a given mesh, and a fixed batch, for the sharding tests."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from sbitnet.config import Config, ModelConfig, resolved_model
from sbitnet.models import DecoderLM
from sbitnet.sharding import make_mesh
from sbitnet.train.optimizer import make_optimizer
from sbitnet.train.state import create_train_state

VOCAB = 256
SHAPES = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, vocab_size=VOCAB)


def tiny_config(**model) -> tuple[Config, ModelConfig]:
  cfg = Config()
  cfg.model = ModelConfig(**{**SHAPES, **model})
  return cfg, resolved_model(cfg.model, VOCAB)


def mesh_of(shape: tuple[int, int, int]):
  return make_mesh(*shape, devices=jax.devices()[:int(np.prod(shape))])


def train_state(cfg: Config, model_cfg: ModelConfig, mesh):
  """(graphdef, state, shardings, optimizer) with parameters created sharded on `mesh`."""
  optimizer = make_optimizer(cfg.train)
  graphdef, state, shardings = create_train_state(
      lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
  return graphdef, state, shardings, optimizer


def random_batch(batch: int = 8, seq: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (batch, seq + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
