"""Import a local Hugging Face Qwen2/LLaMA checkpoint as an sbitnet workdir, and export back.

An imported workdir is what training writes minus the optimizer: `config.json` (the dense
full-precision arm: `sparsity` 0:0, `quant.weights="none"`, no activation quantization, so
`python -m sbitnet.eval` reproduces the HF model) and `checkpoints/0/` with `params` and `meta`.
`load_run` and `--config.train.init_from` read it.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from flax import nnx

from sbitnet.checkpoint import Checkpointer, model_meta
from sbitnet.config import (Config, DataConfig, ModelConfig, QuantConfig, SparsityConfig,
                            resolved_model, to_json, validate)
from sbitnet.data import get_tokenizer
from sbitnet.interop.hf_config import hf_config_from_model, model_config_from_hf, read_hf_config
from sbitnet.interop.hf_weights import check_hf_tensors, hf_from_params, params_from_hf
from sbitnet.interop.safetensors_io import SINGLE_FILE, HFTensors, write_safetensors
from sbitnet.models import DecoderLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# Files beside a tokenizer that transformers' AutoTokenizer reads; copied on export when present.
TOKENIZER_COMPANIONS = ("tokenizer_config.json", "special_tokens_map.json")
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}


def _check_output_dir(path: str, overwrite: bool, flag: str) -> None:
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise FileExistsError(f"{flag}={path!r} is not empty; nothing was written. Give an empty or new "
                          "directory, or pass --overwrite to replace what a conversion wrote there.")


def default_tokenizer(hf_dir: str) -> str:
  """The checkpoint's own tokenizer file (tokenizer.json, else tokenizer.model)."""
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(hf_dir, name)):
      return os.path.abspath(os.path.join(hf_dir, name))
  raise FileNotFoundError(f"{hf_dir!r} holds none of {', '.join(TOKENIZER_FILES)}; pass "
                          "--tokenizer=PATH (or 'byte') to say which tokenizer the model uses.")


def import_hf(hf_dir: str, workdir: str, *, tokenizer: str = "", dtype: str = "auto",
              overwrite: bool = False) -> ModelConfig:
  """Converts `hf_dir` (config.json + safetensors) into the sbitnet workdir `workdir`.

  Every check (architecture, tokenizer, tensor names and shapes, output directory) runs before a
  weight is read. Weights are stored as float32 masters. Returns the resolved ModelConfig.
  """
  hf = read_hf_config(hf_dir)
  model = model_config_from_hf(hf, dtype)
  spec = tokenizer or default_tokenizer(hf_dir)
  vocab = get_tokenizer(spec).vocab_size
  name = os.path.basename(os.path.normpath(hf_dir))
  cfg = Config(name=f"hf-{name}", model=model, sparsity=SparsityConfig(n=0, m=0),
               quant=QuantConfig(weights="none", activations=0),
               data=DataConfig(tokenizer=spec, seq_len=min(DataConfig.seq_len, model.max_positions)))
  resolved = resolved_model(cfg.model, vocab)
  validate(cfg, resolved)
  _check_output_dir(workdir, overwrite, "--workdir")
  tensors = HFTensors(hf_dir)
  check_hf_tensors(resolved, set(tensors.names), tensors.shape, hf_dir)

  abstract = nnx.eval_shape(lambda: DecoderLM(cfg, resolved, rngs=nnx.Rngs(0)))
  params = nnx.split(abstract, nnx.Param)[1]
  nnx.replace_by_pure_dict(params, params_from_hf(resolved, tensors.get))
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(to_json(cfg, resolved))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  checkpointer.save_params(0, params, model_meta(resolved))
  checkpointer.close()
  return resolved


def effective_params(model: DecoderLM) -> dict:
  """The model's parameters (NumPy, float32) with every SparseBitLinear kernel replaced by its
  effective weight W_eff = mask ⊙ Q(W) under the run's sparsity and quantization."""
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  for path, layer in model.sparse_layers().items():
    node = params
    for key in path.split("/"):
      node = node[key]
    node["kernel"] = np.asarray(layer.effective_weight())
  return params


def export_hf(workdir: str, out_dir: str, *, fake_quant: bool = False, dtype: str = "float32",
              overwrite: bool = False) -> str:
  """Writes the run in `workdir` (latest checkpoint) to `out_dir` as a HF checkpoint
  (config.json, model.safetensors, the run's tokenizer file); returns the architecture written.

  Dense export writes the latent weights W. `fake_quant` writes W_eff, so a dense HF model
  reproduces the run's sparse/ternary weights; activation quantization is not reproduced.
  """
  from sbitnet.restore import load_run
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"--dtype={dtype!r} is not valid for export; choose one of "
                     f"{', '.join(map(repr, EXPORT_DTYPES))}.")
  _check_output_dir(out_dir, overwrite, "--to-hf")
  loaded = load_run(workdir, dtype="float32")
  params = (effective_params(loaded.model) if fake_quant else
            jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))))
  tensors = hf_from_params(loaded.model_cfg, params, EXPORT_DTYPES[dtype])
  tok = loaded.tokenizer
  hf = hf_config_from_model(loaded.model_cfg, torch_dtype=dtype, bos_id=tok.bos_id,
                            eos_id=tok.eos_id)
  os.makedirs(out_dir, exist_ok=True)
  write_safetensors(os.path.join(out_dir, SINGLE_FILE), tensors)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  spec = loaded.cfg.data.tokenizer
  if spec.endswith((".json", ".model")):
    target = "tokenizer.json" if spec.endswith(".json") else "tokenizer.model"
    shutil.copyfile(spec, os.path.join(out_dir, target))
    for name in TOKENIZER_COMPANIONS:
      companion = os.path.join(os.path.dirname(spec), name)
      if os.path.isfile(companion):
        shutil.copyfile(companion, os.path.join(out_dir, name))
  return hf["architectures"][0]
