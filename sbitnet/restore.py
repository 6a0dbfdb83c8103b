"""Loading a trained run from its workdir: config, tokenizer and the model with restored weights."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from sbitnet.checkpoint import Checkpointer, checkpoint_dir, model_meta
from sbitnet.config import Config, ModelConfig, from_dict, read_config_json
from sbitnet.data import get_tokenizer
from sbitnet.models import DecoderLM
from sbitnet.sharding import make_mesh, state_shardings

@dataclasses.dataclass
class LoadedRun:
  cfg: Config
  model_cfg: ModelConfig          # resolved shapes
  model: DecoderLM                # weights restored
  tokenizer: Any
  step: int


def read_config(workdir: str) -> tuple[Config, ModelConfig]:
  """`workdir/config.json` -> (Config, resolved ModelConfig)."""
  return from_dict(read_config_json(workdir, "give the --workdir of a training run (or of "
                                    "`python -m sbitnet.convert`)."))


def load_run(workdir: str, step: int | None = None, *, dtype: str | None = None) -> LoadedRun:
  """The model of a run at `step` (default: the latest checkpoint), on all local devices
  (parameters sharded as in training, over a data-parallel mesh)."""
  cfg, model_cfg = read_config(workdir)
  if dtype is not None:
    model_cfg = dataclasses.replace(model_cfg, dtype=dtype)
  checkpointer = Checkpointer(checkpoint_dir(workdir), read_only=True)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir!r} holds no checkpoint yet.")
  checkpointer.check_compatible(model_meta(model_cfg), step)
  abstract = nnx.eval_shape(lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  shardings = state_shardings(abstract_params, make_mesh())
  params = checkpointer.restore_params(abstract_params, shardings, step)
  tokenizer = get_tokenizer(cfg.data.tokenizer) if cfg.data.source != "tokens" else None
  if tokenizer is None:
    from sbitnet.data import load_splits
    tokenizer = load_splits(cfg.data).tokenizer
  return LoadedRun(cfg, model_cfg, nnx.merge(graphdef, params), tokenizer, step)
