"""A tiny random Hugging Face Qwen2/LLaMA checkpoint writer and a NumPy forward pass of those
architectures (as transformers computes them), the oracle for the import tests."""

from __future__ import annotations

import json
import os

import numpy as np

from sbitnet.interop.safetensors_io import write_safetensors

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=64, rope_theta=10000.0,
            rms_norm_eps=1e-6, hidden_act="silu")


def hf_config(arch: str = "Qwen2ForCausalLM", tie: bool = False, **overrides) -> dict:
  model_type = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}.get(arch, "other")
  return {"architectures": [arch], "model_type": model_type, **TINY, "tie_word_embeddings": tie,
          **overrides}


def random_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Every tensor of `config` (torch `[out, in]` layout, float32), random."""
  rng = np.random.default_rng(seed)
  d, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  hd = d // config["num_attention_heads"]
  q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
  w = lambda *shape: rng.normal(0.0, 0.2, shape).astype(np.float32)
  norm = lambda: (1.0 + rng.normal(0.0, 0.1, d)).astype(np.float32)
  tensors = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": norm()}
  if not config["tie_word_embeddings"]:
    tensors["lm_head.weight"] = w(v, d)
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    tensors.update({
        p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
        p + "self_attn.q_proj.weight": w(q, d), p + "self_attn.k_proj.weight": w(kv, d),
        p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, q),
        p + "mlp.gate_proj.weight": w(ff, d), p + "mlp.up_proj.weight": w(ff, d),
        p + "mlp.down_proj.weight": w(d, ff)})
    if config["architectures"] == ["Qwen2ForCausalLM"]:
      tensors.update({p + "self_attn.q_proj.bias": w(q), p + "self_attn.k_proj.bias": w(kv),
                      p + "self_attn.v_proj.bias": w(kv)})
  return tensors


def write_checkpoint(directory: str, config: dict, tensors: dict[str, np.ndarray],
                     shards: int = 1) -> None:
  """config.json plus `model.safetensors`, or `shards` files and their index."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  if shards == 1:
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
    return
  names = sorted(tensors)
  weight_map = {}
  for s in range(shards):
    file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: tensors[n] for n in names[s::shards]}
    write_safetensors(os.path.join(directory, file), part)
    weight_map.update({n: file for n in part})
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
  return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rotate_half(x: np.ndarray) -> np.ndarray:
  half = x.shape[-1] // 2
  return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(config: dict, tensors: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
  """Logits `[T, vocab]` (float64) of one sequence `tokens` `[T]`."""
  t = tensors
  d, heads, kv_heads = (config["hidden_size"], config["num_attention_heads"],
                        config["num_key_value_heads"])
  hd, eps = d // heads, config["rms_norm_eps"]
  f64 = {k: v.astype(np.float64) for k, v in t.items()}
  inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, hd, 2) / hd)
  freqs = np.outer(np.arange(len(tokens)), inv_freq)
  emb = np.concatenate([freqs, freqs], axis=-1)
  cos, sin = np.cos(emb)[:, None], np.sin(emb)[:, None]
  causal = np.tril(np.ones((len(tokens), len(tokens)), bool))
  x = f64["model.embed_tokens.weight"][tokens]
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    linear = lambda name, h: h @ f64[p + name + ".weight"].T + f64.get(p + name + ".bias", 0.0)
    h = _rms_norm(x, f64[p + "input_layernorm.weight"], eps)
    q = linear("self_attn.q_proj", h).reshape(len(tokens), heads, hd)
    k = linear("self_attn.k_proj", h).reshape(len(tokens), kv_heads, hd)
    v = linear("self_attn.v_proj", h).reshape(len(tokens), kv_heads, hd)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = np.where(causal, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum("hqk,khd->qhd", probs, v).reshape(len(tokens), heads * hd)
    x = x + linear("self_attn.o_proj", attn)
    h = _rms_norm(x, f64[p + "post_attention_layernorm.weight"], eps)
    gate, up = linear("mlp.gate_proj", h), linear("mlp.up_proj", h)
    x = x + linear("mlp.down_proj", gate / (1.0 + np.exp(-gate)) * up)
  x = _rms_norm(x, f64["model.norm.weight"], eps)
  head = f64["model.embed_tokens.weight" if config["tie_word_embeddings"] else "lm_head.weight"]
  return x @ head.T
