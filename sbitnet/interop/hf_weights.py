"""Tensor mapping between a Hugging Face Qwen2/LLaMA state dict and sbitnet's parameter tree.

HF linear weights are torch `[out, in]`; sbitnet kernels are Flax `[in, out]`, stacked over a
leading `layers` axis, with q|k|v fused along the output axis (`qkv.kernel` `[L, d, q + 2kv]`, heads
contiguous as in HF's `view(..., n_heads, head_dim)`) and gate|up fused likewise
(`gate_up.kernel` `[L, d, 2 d_ff]`). Norm scales and biases are 1-D per layer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sbitnet.config import ModelConfig
from sbitnet.interop.hf_config import UnsupportedCheckpoint

PureParams = dict  # nested {name: dict | np.ndarray}, the `nnx.to_pure_dict` layout

_LAYER = "model.layers.{i}."
# (sbitnet path under `blocks`, HF names per layer fused in order, transpose to [in, out])
_BLOCK_TENSORS = (
    (("attn_norm", "scale"), ("input_layernorm.weight",), False),
    (("attn", "qkv", "kernel"),
     ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), True),
    (("attn", "qkv", "bias"),
     ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), False),
    (("attn", "o", "kernel"), ("self_attn.o_proj.weight",), True),
    (("mlp_norm", "scale"), ("post_attention_layernorm.weight",), False),
    (("mlp", "gate_up", "kernel"), ("mlp.gate_proj.weight", "mlp.up_proj.weight"), True),
    (("mlp", "down", "kernel"), ("mlp.down_proj.weight",), True),
)


def _hf_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every HF tensor the model needs, with its torch shape."""
  d, ff, v = model.d_model, model.d_ff, model.vocab_size
  head_dim = d // model.n_heads
  q, kv = model.n_heads * head_dim, model.n_kv_heads * head_dim
  per_layer = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
               "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
               "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
               "mlp.gate_proj.weight": (ff, d), "mlp.up_proj.weight": (ff, d),
               "mlp.down_proj.weight": (d, ff)}
  if model.qkv_bias:
    per_layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                      "self_attn.v_proj.bias": (kv,)})
  shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
  if not model.tie_embeddings:
    shapes["lm_head.weight"] = (v, d)
  for i in range(model.n_layers):
    shapes.update({_LAYER.format(i=i) + k: s for k, s in per_layer.items()})
  return shapes


def check_hf_tensors(model: ModelConfig, names: set[str],
                     shape_of: Callable[[str], tuple[int, ...]], where: str) -> None:
  """Raises UnsupportedCheckpoint naming the first missing tensor, wrong shape or tensor sbitnet
  would have to drop (reads no data). RoPE caches and a tied model's copy of its head are allowed."""
  expected = _hf_shapes(model)
  for name, shape in expected.items():
    if name not in names:
      raise UnsupportedCheckpoint(f"Tensor {name!r} is missing from {where}; a checkpoint of this "
                                  f"config.json needs it (shape {list(shape)}).")
    if tuple(shape_of(name)) != shape:
      raise UnsupportedCheckpoint(f"Tensor {name!r} in {where} has shape {list(shape_of(name))}, "
                                  f"but config.json implies {list(shape)}.")
  unexpected = sorted(n for n in names - set(expected) if not n.endswith("rotary_emb.inv_freq")
                      and not (n == "lm_head.weight" and model.tie_embeddings))
  if unexpected:
    raise UnsupportedCheckpoint(f"Tensor {unexpected[0]!r} in {where} (one of {len(unexpected)} "
                                "unexpected tensors) has no place in the sbitnet model of this "
                                "config.json; converting would drop it.")


def params_from_hf(model: ModelConfig, get: Callable[[str], np.ndarray]) -> PureParams:
  """sbitnet parameters (float32 NumPy) from HF tensors fetched one at a time by `get(name)`."""
  f32 = lambda name: np.asarray(get(name), np.float32)
  blocks: dict = {}
  for path, names, transpose in _BLOCK_TENSORS:
    if path[-1] == "bias" and not model.qkv_bias:
      continue
    per_layer = []
    for i in range(model.n_layers):
      parts = [f32(_LAYER.format(i=i) + name) for name in names]
      per_layer.append(np.concatenate([p.T if transpose else p for p in parts], axis=-1))
    node = blocks
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.stack(per_layer)
  params = {"embedding": f32("model.embed_tokens.weight"), "blocks": blocks,
            "final_norm": {"scale": f32("model.norm.weight")}}
  if not model.tie_embeddings:
    params["lm_head"] = f32("lm_head.weight").T
  return params


def hf_from_params(model: ModelConfig, params: PureParams, dtype: np.dtype) -> dict[str, np.ndarray]:
  """The HF state dict (torch `[out, in]` layout, `dtype`) of sbitnet parameters."""
  head_dim = model.d_model // model.n_heads
  q, kv = model.n_heads * head_dim, model.n_kv_heads * head_dim
  splits = {"qkv": (q, q + kv), "gate_up": (model.d_ff,)}
  cast = lambda x: np.asarray(x, np.float32).astype(dtype)
  out = {"model.embed_tokens.weight": cast(params["embedding"]),
         "model.norm.weight": cast(params["final_norm"]["scale"])}
  if not model.tie_embeddings:
    out["lm_head.weight"] = cast(np.asarray(params["lm_head"]).T)
  for path, names, transpose in _BLOCK_TENSORS:
    if path[-1] == "bias" and not model.qkv_bias:
      continue
    stacked = params["blocks"]
    for key in path:
      stacked = stacked[key]
    stacked = np.asarray(stacked)
    for i in range(model.n_layers):
      parts = np.split(stacked[i], splits[path[-2]], axis=-1) if len(names) > 1 else [stacked[i]]
      for name, part in zip(names, parts):
        out[_LAYER.format(i=i) + name] = cast(part.T if transpose else part)
  return out
