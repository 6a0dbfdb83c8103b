"""AdamW with gradient clipping, scheduled LR and weight decay (matrices only)."""

from __future__ import annotations

import jax
import optax

from sbitnet.config import TrainConfig
from sbitnet.train.schedules import learning_rate, weight_decay


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """clip_by_global_norm(grad_clip) -> AdamW(b1, b2, eps 1e-8) with decoupled weight decay on
  parameters of rank >= 2 (kernels and embeddings; not norms or biases)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=weight_decay(cfg),
                      mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
