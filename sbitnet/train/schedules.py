"""Learning-rate and weight-decay schedules (optax), as functions of the optimizer step."""

from __future__ import annotations

import optax

from sbitnet.config import TrainConfig


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
  """cosine: linear warm-up to `lr`, cosine to `min_lr_ratio·lr` at `steps`.

  two_stage (BitNet b1.58): warm-up, then linear `lr -> stage2_lr_ratio·lr` over the first half and
  linear `stage2_lr_ratio·lr -> min_lr_ratio·lr` over the second (the FAQ's linear two-stage
  decay; the stage values follow a public reproduction, 1.5e-3 -> 1e-3 -> ~0).
  """
  warmup = min(cfg.warmup_steps, cfg.steps - 1)
  floor = cfg.lr * cfg.min_lr_ratio
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(cfg.steps, warmup + 1),
                                              end_value=floor)
  half = max(cfg.steps // 2, warmup + 1)
  mid = cfg.lr * cfg.stage2_lr_ratio
  return optax.join_schedules([
      optax.linear_schedule(0.0, cfg.lr, warmup),
      optax.linear_schedule(cfg.lr, mid, half - warmup),
      optax.linear_schedule(mid, floor, max(cfg.steps - half, 1)),
  ], boundaries=[warmup, half])


def weight_decay(cfg: TrainConfig) -> optax.Schedule:
  """Constant `weight_decay` (cosine), or `weight_decay` then 0 from the half-way step (two_stage)."""
  if cfg.schedule == "cosine":
    return optax.constant_schedule(cfg.weight_decay)
  return optax.join_schedules([optax.constant_schedule(cfg.weight_decay),
                               optax.constant_schedule(0.0)], boundaries=[cfg.steps // 2])
