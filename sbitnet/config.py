"""The one experiment-config schema: typed dataclasses, overridable from absl flags
(`--config.sparsity.n=4`), validated once, written to `workdir/config.json`."""


import dataclasses
import importlib.util
import json
import os
from types import ModuleType
from typing import Any

from sbitnet import __version__
from sbitnet.data.config import DataConfig
from sbitnet.models.presets import PRESETS
from sbitnet.ops.validation import check_choice

QUANT_WEIGHTS = ("ternary", "none")
ACT_BITS = (8, 4, 0)
SCHEDULES = ("cosine", "two_stage")
REMAT = ("none", "full", "dots")
DTYPES = ("auto", "bfloat16", "float32")


@dataclasses.dataclass
class ModelConfig:
  """Shape fields left at 0 (or None) take the preset's value; vocab_size 0 = the tokenizer's."""
  preset: str = "tiny"
  d_model: int = 0
  n_layers: int = 0
  n_heads: int = 0
  n_kv_heads: int = 0
  d_ff: int = 0
  vocab_size: int = 0
  max_positions: int = 0
  rope_theta: float = 0.0
  tie_embeddings: bool = True
  qkv_bias: bool = False
  norm_eps: float = 1e-6
  dtype: str = "auto"              # compute dtype (auto: float32 on CPU, else bfloat16); masters f32
  remat: str = "none"              # activation rematerialisation per block: none | full | dots


@dataclasses.dataclass
class SparsityConfig:
  """N:M pattern along each linear layer's input axis; n = m = 0 means dense."""
  n: int = 6
  m: int = 8
  start_fraction: float = 0.0      # dense for this share of steps, sparse after (p = 1 - this)
  grad: str = "dense"              # dense (dual STE) | masked (ablation: no gradient to pruned)
  mask_from: str = "latent"        # latent | quantized (ablation)
  order: str = "quant_then_mask"   # quant_then_mask | mask_then_quant (ablation)
  sr_ste: float = 0.0              # SR-STE decay of pruned weights; 0 = off (the paper)


@dataclasses.dataclass
class QuantConfig:
  weights: str = "ternary"         # ternary (BitNet b1.58) | none (BF16 arms)
  activations: int = 8             # per-token absmax bits for BitNet arms: 8 | 4 | 0 (off)


@dataclasses.dataclass
class TrainConfig:
  steps: int = 300
  batch_size: int = 16             # global sequences per optimizer step
  grad_accum: int = 1
  seed: int = 0
  lr: float = 3e-3
  schedule: str = "cosine"         # cosine | two_stage (BitNet: LR drop and WD 0 at half-way)
  warmup_steps: int = 30
  min_lr_ratio: float = 0.1
  stage2_lr_ratio: float = 2 / 3   # two_stage: stage-2 peak LR as a share of lr (1.5e-3 -> 1e-3)
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  grad_clip: float = 1.0
  loss_chunk: int = 1024           # tokens per device in each chunk of the chunked cross-entropy
  log_every: int = 10
  stats_every: int = 25            # mask flip rate, zero fraction, gamma
  eval_every: int = 100
  eval_batches: int = 8
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  init_from: str = ""              # params-only init from another run's workdir or checkpoint
  tensorboard: bool = False


@dataclasses.dataclass
class MeshConfig:
  data: int = -1                   # -1 fills the remaining devices
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass
class Config:
  name: str = "default"            # "" derives one from the preset and the arm (`run_name`)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  sparsity: SparsityConfig = dataclasses.field(default_factory=SparsityConfig)
  quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


class ConfigError(ValueError):
  """A config value that cannot run, with the field, the value and what would be valid."""


def resolved_model(model: ModelConfig, tokenizer_vocab: int) -> ModelConfig:
  """The model config with preset shapes filled in and vocab_size fixed."""
  if model.preset not in PRESETS:
    raise ConfigError(f"model.preset={model.preset!r} is unknown; choose one of "
                      f"{', '.join(map(repr, PRESETS))}.")
  preset = PRESETS[model.preset]
  filled = {k: (getattr(model, k) or v) for k, v in preset.items() if k != "tie_embeddings"}
  resolved = dataclasses.replace(model, **filled)
  if resolved.dtype == "auto":
    import jax
    resolved = dataclasses.replace(
        resolved, dtype="float32" if jax.default_backend() == "cpu" else "bfloat16")
  if resolved.vocab_size == 0:
    resolved = dataclasses.replace(resolved, vocab_size=tokenizer_vocab)
  if resolved.vocab_size < tokenizer_vocab:
    raise ConfigError(f"model.vocab_size={resolved.vocab_size} is smaller than the tokenizer's "
                      f"vocabulary ({tokenizer_vocab}); use 0 (take the tokenizer's) or >= "
                      f"{tokenizer_vocab}.")
  return resolved


def contraction_sizes(model: ModelConfig) -> dict[str, int]:
  head_dim = model.d_model // model.n_heads
  return {"d_model (q/k/v and gate/up inputs)": model.d_model,
          "n_heads*head_dim (o_proj input)": model.n_heads * head_dim,
          "d_ff (down_proj input)": model.d_ff}


def _choice(field: str, value: Any, choices: tuple) -> None:
  check_choice(field, value, choices, error=ConfigError)


def validate(cfg: Config, model: ModelConfig) -> None:
  """Checks the whole config against the resolved model; raises ConfigError before any work."""
  sp, tr = cfg.sparsity, cfg.train
  _choice("quant.weights", cfg.quant.weights, QUANT_WEIGHTS)
  _choice("quant.activations", cfg.quant.activations, ACT_BITS)
  _choice("train.schedule", tr.schedule, SCHEDULES)
  _choice("model.remat", model.remat, REMAT)
  _choice("model.dtype", model.dtype, DTYPES)
  _choice("sparsity.grad", sp.grad, ("dense", "masked"))
  _choice("sparsity.mask_from", sp.mask_from, ("latent", "quantized"))
  _choice("sparsity.order", sp.order, ("quant_then_mask", "mask_then_quant"))
  if sp.mask_from == "quantized" and cfg.quant.weights != "ternary":
    raise ConfigError("sparsity.mask_from='quantized' needs quant.weights='ternary'.")
  if (sp.n == 0) != (sp.m == 0):
    raise ConfigError(f"sparsity.n={sp.n}, sparsity.m={sp.m}: set both (e.g. 6 and 8) or both to "
                      "0 for dense.")
  if sp.m:
    if not 1 <= sp.n < sp.m:
      raise ConfigError(f"sparsity {sp.n}:{sp.m} is invalid: need 1 <= n < m (e.g. 6:8, 2:4), or "
                        "n = m = 0 for dense.")
    for what, size in contraction_sizes(model).items():
      if size % sp.m:
        raise ConfigError(f"sparsity {sp.n}:{sp.m} does not divide the model: {what} is {size}, "
                          f"not a multiple of m={sp.m}. Pick m dividing {size} or another model.")
  if not 0.0 <= sp.start_fraction < 1.0:
    raise ConfigError(f"sparsity.start_fraction={sp.start_fraction} must be in [0, 1).")
  if model.d_model % model.n_heads or model.n_heads % model.n_kv_heads:
    raise ConfigError(f"model: d_model={model.d_model} must divide by n_heads={model.n_heads}, "
                      f"which must divide by n_kv_heads={model.n_kv_heads}.")
  if cfg.data.seq_len > model.max_positions:
    raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_positions="
                      f"{model.max_positions} of preset {model.preset!r}.")
  for field in ("steps", "batch_size", "grad_accum", "log_every", "stats_every", "eval_every",
                "eval_batches", "checkpoint_every", "keep_checkpoints", "loss_chunk"):
    if getattr(tr, field) < 1:
      raise ConfigError(f"train.{field}={getattr(tr, field)} must be >= 1.")
  if tr.batch_size % tr.grad_accum:
    raise ConfigError(f"train.batch_size={tr.batch_size} is not divisible by train.grad_accum="
                      f"{tr.grad_accum}.")
  if tr.init_from and not os.path.exists(tr.init_from):
    raise ConfigError(f"train.init_from={tr.init_from!r} does not exist; give another run's "
                      "workdir or checkpoint directory.")


def field_paths(obj: Any, prefix: str = "") -> dict[str, Any]:
  """Every leaf field of a config dataclass, by dotted path."""
  out = {}
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    path = f"{prefix}{f.name}"
    if dataclasses.is_dataclass(value):
      out.update(field_paths(value, path + "."))
    else:
      out[path] = value
  return out


# Fields that change speed, memory or file layout, and results only by float rounding: how often
# to log, evaluate and checkpoint, where caches and TensorBoard files go, the device mesh,
# rematerialisation and the loss chunk size. Every other field is result-affecting.
NON_RESULT_FIELDS = frozenset({
    "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.tensorboard", "train.loss_chunk", "data.cache_dir", "model.remat",
    "mesh.data", "mesh.fsdp", "mesh.tensor",
})
# Result-affecting fields a resumed run may still change: its name and the initialisation source
# (a resume restores its own checkpoint instead). Not train.steps: the LR schedule and the
# dense-to-sparse switch step are fractions of it, so changing it mid-run changes both.
RESUMABLE_CHANGES = frozenset({"name", "train.init_from"})


def result_changes(saved: Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
  """`{field: (saved value, new value)}` for the result-affecting fields in which `cfg` differs
  from a run's `saved` config, other than RESUMABLE_CHANGES."""
  old, new = field_paths(saved), field_paths(cfg)
  return {k: (old.get(k), v) for k, v in new.items()
          if k not in NON_RESULT_FIELDS | RESUMABLE_CHANGES and old.get(k) != v}


def load_python_file(path: str) -> ModuleType:
  """The module defined by the Python file at `path` (an experiment file), executed once."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def with_absolute_paths(cfg: Config) -> Config:
  """`cfg` with its file paths (data.path except the stdlib's subset pattern, a tokenizer file,
  data.cache_dir, train.init_from) made absolute, so that the run's config.json means the same
  files from any working directory (eval, sample, export, a resume)."""
  absolute = lambda p: os.path.abspath(os.path.expanduser(p)) if p else p
  data = dataclasses.replace(
      cfg.data, path=cfg.data.path if cfg.data.source == "stdlib" else absolute(cfg.data.path),
      tokenizer=cfg.data.tokenizer if cfg.data.tokenizer == "byte" else absolute(
          cfg.data.tokenizer),
      cache_dir=absolute(cfg.data.cache_dir))
  train = dataclasses.replace(cfg.train, init_from=absolute(cfg.train.init_from))
  return dataclasses.replace(cfg, data=data, train=train)


def run_name(cfg: Config) -> str:
  """`cfg.name`, or when it is empty one from the preset and the arm, e.g.
  `tiny-sparse-bitnet-6of8`, `tiny-dense-bf16`."""
  if cfg.name:
    return cfg.name
  precision = "bitnet" if cfg.quant.weights == "ternary" else "bf16"
  sp = cfg.sparsity
  arm = f"sparse-{precision}-{sp.n}of{sp.m}" if sp.n else f"dense-{precision}"
  return f"{cfg.model.preset}-{arm}"


def check_override_paths(argv: list[str], flag: str = "config") -> None:
  """Rejects `--config.<path>=...` flags that name no field, listing the valid ones nearby."""
  valid = field_paths(Config())
  for arg in argv:
    if not arg.startswith(f"--{flag}."):
      continue
    path = arg[len(flag) + 3:].split("=", 1)[0]
    if path not in valid:
      parent = path.rsplit(".", 1)[0] if "." in path else ""
      siblings = sorted(p for p in valid if parent and p.startswith(parent + "."))
      listing = ", ".join(siblings) if siblings else ", ".join(sorted({p.split(".")[0] for p in valid}))
      raise ConfigError(f"Unknown config field {path!r} in {arg!r}. Valid fields here: {listing}.")


def to_dict(cfg: Config, model: ModelConfig) -> dict[str, Any]:
  """What `config.json` holds: the package version, the config and the resolved model shapes."""
  return {"sbitnet_version": __version__, "config": dataclasses.asdict(cfg),
          "resolved_model": dataclasses.asdict(model)}


def to_json(cfg: Config, model: ModelConfig) -> str:
  return json.dumps(to_dict(cfg, model), indent=2, sort_keys=True)


def read_config_json(directory: str, hint: str) -> dict[str, Any]:
  """`directory/config.json` as a dict; FileNotFoundError naming the directory and `hint` (what
  directory was expected) when it is missing."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No config.json in {directory!r}: {hint}")
  with open(path) as f:
    return json.load(f)


def from_dict(saved: dict[str, Any]) -> tuple[Config, ModelConfig]:
  """The inverse of `to_dict`: (Config, resolved ModelConfig)."""
  raw = saved["config"]
  sections = {f.name: f.type(**raw[f.name]) for f in dataclasses.fields(Config)
              if dataclasses.is_dataclass(f.type) and f.name in raw}
  return Config(name=raw.get("name", "run"), **sections), ModelConfig(**saved["resolved_model"])
