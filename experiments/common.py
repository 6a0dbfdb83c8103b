"""Shared pieces of the experiment files: argument parsing, scales and the four arms."""

from __future__ import annotations

import dataclasses

from sbitnet.config import Config, DataConfig, ModelConfig, TrainConfig

# quant.weights, sparsity pattern (n, m): the paper's four arms at 6:8
ARMS = {
    "dense_bf16": ("none", 0, 0),
    "sparse_bf16": ("none", 6, 8),
    "dense_bitnet": ("ternary", 0, 0),
    "sparse_bitnet": ("ternary", 6, 8),
}

SCALES = ("cpu", "small", "paper")


def parse_arg(arg: str | None, **defaults: str) -> dict[str, str]:
  """'key=value,key=value' -> dict over `defaults`; unknown keys are an error."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r} is not key=value with key in "
                       f"{', '.join(defaults)} (got {arg!r}).")
    values[key] = value
  return values


def base_config(scale: str, model: str, name: str) -> Config:
  """cpu: the tiny preset on the stdlib corpus (minutes on a laptop CPU). small: ~25M parameters,
  seq 512, 64 x 512 tokens per step, 3000 steps (one GPU). paper: the Qwen2.5 shape `model`, seq
  2048, 512 x 2048 ≈ 1M tokens per step, 47,700 steps ≈ 50B tokens, the released code's cosine
  LR 3e-4 with 1000 warm-up steps; needs `--config.data.source=tokens --config.data.path=DIR`
  (e.g. RefinedWeb prepared with `python -m sbitnet.data.prepare`; `model` default
  qwen2.5-0.5b). `model` applies to `paper` only (elsewhere `--config.model.preset`)."""
  if model and scale != "paper":
    raise ValueError(f"model={model!r} applies to scale=paper only; scale={scale} trains its own "
                     "preset (override it with --config.model.preset).")
  model = model or "qwen2.5-0.5b"
  if scale == "cpu":
    return Config(name=name)
  if scale == "small":
    return Config(name=name, model=ModelConfig(preset="small"),
                  data=DataConfig(seq_len=512),
                  train=TrainConfig(steps=3000, batch_size=64, lr=1.5e-3, warmup_steps=200,
                                    eval_every=500, eval_batches=16, checkpoint_every=500,
                                    log_every=50, stats_every=100))
  if scale == "paper":
    return Config(name=name, model=ModelConfig(preset=model, remat="full"),
                  data=DataConfig(source="tokens", seq_len=2048),
                  train=TrainConfig(steps=47_700, batch_size=512, lr=3e-4, min_lr_ratio=1e-5 / 3e-4,
                                    warmup_steps=1000, eval_every=2000, eval_batches=64,
                                    checkpoint_every=1000, log_every=50, stats_every=100))
  raise ValueError(f"scale={scale!r} is not one of {', '.join(SCALES)}.")


def with_arm(cfg: Config, arm: str) -> Config:
  if arm not in ARMS:
    raise ValueError(f"arm={arm!r} is not one of {', '.join(ARMS)}.")
  weights, n, m = ARMS[arm]
  cfg.quant = dataclasses.replace(cfg.quant, weights=weights)
  cfg.sparsity = dataclasses.replace(cfg.sparsity, n=n, m=m)
  return cfg
