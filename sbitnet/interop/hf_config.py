"""Hugging Face `config.json` <-> sbitnet `ModelConfig` for the decoder architectures sbitnet runs.

Supported: Qwen2ForCausalLM (q/k/v biases), LlamaForCausalLM and MistralForCausalLM without biases,
all with SiLU SwiGLU, RMSNorm, full-head-dim RoPE without scaling. Anything else is refused with the
field and its value, before any tensor is read.
"""

from __future__ import annotations

from typing import Any

from sbitnet.config import ModelConfig, read_config_json
from sbitnet.models.presets import PRESETS

SUPPORTED = ("Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM")
REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "vocab_size")
SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size")


class UnsupportedCheckpoint(ValueError):
  """A Hugging Face checkpoint sbitnet cannot represent exactly, or a tensor that is missing or
  has the wrong shape."""


def read_hf_config(directory: str) -> dict[str, Any]:
  return read_config_json(directory, "give a local Hugging Face model directory (config.json + "
                          "*.safetensors); nothing is downloaded.")


def _architecture(hf: dict[str, Any]) -> str:
  archs = hf.get("architectures") or []
  if len(archs) != 1 or archs[0] not in SUPPORTED:
    raise UnsupportedCheckpoint(f"Unsupported architecture {archs!r} (config.json 'architectures');"
                                f" sbitnet converts exactly one of {', '.join(SUPPORTED)}.")
  return archs[0]


def _rope_theta(hf: dict[str, Any]) -> float:
  """`rope_theta`, from the top level or from `rope_parameters` (newer transformers); scaled RoPE
  variants (linear, dynamic, yarn, llama3, ...) are refused."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = params.get("rope_type", params.get("type", "default"))
  if kind != "default":
    raise UnsupportedCheckpoint(f"RoPE scaling {kind!r} (config.json rope_scaling/rope_parameters) "
                                "is not supported; sbitnet implements plain RoPE ('default') only.")
  return float(hf.get("rope_theta", params.get("rope_theta", 10000.0)))


def _refuse(field: str, value: Any, valid: str) -> None:
  raise UnsupportedCheckpoint(f"config.json {field}={value!r} is not supported: sbitnet needs "
                              f"{valid}.")


def model_config_from_hf(hf: dict[str, Any], dtype: str) -> ModelConfig:
  """The ModelConfig (all shapes set, `dtype` as given) of a supported HF config.

  The sliding window of Mistral (and of Qwen2 with `use_sliding_window`) is honoured by capping
  `max_positions` at the window, inside which full causal attention is the same computation.
  """
  arch = _architecture(hf)
  missing = [f for f in REQUIRED_FIELDS if f not in hf]
  if missing:
    raise UnsupportedCheckpoint(f"config.json of this {arch} lacks {', '.join(missing)}; every "
                                f"one of {', '.join(REQUIRED_FIELDS)} is needed.")
  d, heads = hf["hidden_size"], hf["num_attention_heads"]
  if hf.get("hidden_act", "silu") != "silu":
    _refuse("hidden_act", hf["hidden_act"], "'silu' (SwiGLU)")
  if hf.get("head_dim") not in (None, d // heads) or d % heads:
    _refuse("head_dim", hf.get("head_dim"), f"hidden_size / num_attention_heads = {d / heads:g}")
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    _refuse("partial_rotary_factor", hf["partial_rotary_factor"], "1.0 (RoPE on the whole head)")
  if arch != "Qwen2ForCausalLM":
    for field in ("attention_bias", "mlp_bias"):
      if hf.get(field):
        _refuse(field, hf[field], "false (sbitnet projections have no bias, except Qwen2's q/k/v)")
  max_positions = hf.get("max_position_embeddings", 2048)
  window = hf.get("sliding_window") if (arch == "MistralForCausalLM"
                                        or hf.get("use_sliding_window")) else None
  if window:
    max_positions = min(max_positions, window)
  shapes = dict(d_model=d, n_layers=hf["num_hidden_layers"], n_heads=heads,
                n_kv_heads=hf.get("num_key_value_heads") or heads, d_ff=hf["intermediate_size"],
                vocab_size=hf["vocab_size"])
  preset = next((name for name, p in PRESETS.items()
                 if all(p[k] == shapes[k] for k in SHAPE_FIELDS)), "tiny")
  return ModelConfig(preset=preset, **shapes, max_positions=max_positions,
                     rope_theta=_rope_theta(hf), tie_embeddings=bool(hf.get("tie_word_embeddings")),
                     qkv_bias=arch == "Qwen2ForCausalLM", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                     dtype=dtype)


def hf_config_from_model(model: ModelConfig, *, torch_dtype: str, bos_id: int | None,
                         eos_id: int | None) -> dict[str, Any]:
  """The HF config.json of an sbitnet model: Qwen2ForCausalLM when it has q/k/v biases, else
  LlamaForCausalLM."""
  qwen = model.qkv_bias
  hf = {
      "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
      "model_type": "qwen2" if qwen else "llama",
      "hidden_size": model.d_model, "intermediate_size": model.d_ff,
      "num_hidden_layers": model.n_layers, "num_attention_heads": model.n_heads,
      "num_key_value_heads": model.n_kv_heads, "vocab_size": model.vocab_size,
      "max_position_embeddings": model.max_positions, "rope_theta": model.rope_theta,
      "rms_norm_eps": model.norm_eps, "tie_word_embeddings": model.tie_embeddings,
      "hidden_act": "silu", "torch_dtype": torch_dtype, "bos_token_id": bos_id,
      "eos_token_id": eos_id,
  }
  if not qwen:
    hf.update(attention_bias=False, mlp_bias=False)
  return hf

