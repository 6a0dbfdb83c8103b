"""The packed inference checkpoint: ternary linear layers as 2-bit `sbitnet.kernels` codes.

One `.npz` file (NumPy's zip of arrays: one file, no optional dependency, uint8/float32 as they
are, readable lazily by name without pickle). Arrays are named by their path in the module tree
(`blocks/attn/qkv/codes`, `embedding`, ...); the array `__meta__` holds UTF-8 JSON: the format
name and version, the kernels' packing version, the run's `config.json` contents, the tokenizer
spec and the training step. Linear layers keep `codes` uint8 `[layers, out, Kp / 4]` (the kernels'
packing version 2) and `scale` float32 `[layers, out]` (gamma per output column); embeddings, norms
and biases stay float32. Files of packing version 1 (the same bytes as `[layers, Kp / 4, out]`)
are read too, their codes transposed on load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbitnet import kernels
from sbitnet.config import Config, ModelConfig, from_dict, to_dict
from sbitnet.data import get_tokenizer
from sbitnet.infer.packed_linear import PackedLinear
from sbitnet.models import DecoderLM, parameter_counts
from sbitnet.nn import SparseBitLinear
from sbitnet.ops import scale_per_column

FORMAT = "sbitnet-packed"
VERSION = 1
META = "__meta__"
# Packing versions this build reads: 1 stored each layer's codes transposed.
READABLE_PACKING = (1, kernels.FORMAT_VERSION)


@dataclasses.dataclass
class PackedRun:
  cfg: Config
  model_cfg: ModelConfig
  model: DecoderLM                # linear layers are PackedLinear
  tokenizer: Any
  step: int


def check_packable(cfg: Config) -> None:
  """Raises ValueError unless the run's linear layers are ternary (a BitNet arm)."""
  if cfg.quant.weights != "ternary":
    raise ValueError(f"only BitNet runs (quant.weights='ternary') can be packed; this run has "
                     f"quant.weights={cfg.quant.weights!r} (a BF16 arm), whose weights are not "
                     "ternary.")


def packed_linear_factory(cfg: Config, model_cfg: ModelConfig, implementation: str | None = None):
  """A `PackedLinear` constructor with the run's activation quantization and compute dtype."""
  return functools.partial(PackedLinear, act_bits=cfg.quant.activations or None,
                           dtype=jnp.dtype(model_cfg.dtype), implementation=implementation)


def abstract_packed_model(cfg: Config, model_cfg: ModelConfig,
                          implementation: str | None = None) -> DecoderLM:
  """The packed model's structure, with `jax.ShapeDtypeStruct` leaves."""
  linear = packed_linear_factory(cfg, model_cfg, implementation)
  return nnx.eval_shape(lambda: DecoderLM(cfg, model_cfg, rngs=nnx.Rngs(0), linear=linear))


def ternary_of(w_eff: jax.Array, split: tuple[int, ...] | None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """An effective weight `[in, out]` whose entries are 0 or ±gamma of their fused sub-matrix ->
  (t int8 `[in, out]`, gamma float32 `()` or `[len(split)]`, whether `t * gamma == w_eff`)."""
  mag = jnp.abs(w_eff.astype(jnp.float32))
  if split is None:
    gamma = jnp.max(mag)
  else:
    bounds = np.cumsum((0,) + split)
    gamma = jnp.stack([jnp.max(mag[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
  t = jnp.sign(w_eff).astype(jnp.int8)
  exact = jnp.all(t.astype(jnp.float32) * scale_per_column(gamma, split) == w_eff)
  return t, gamma, exact


@functools.partial(jax.jit, static_argnums=1)
def _pack_stacked(w_eff: jax.Array, split: tuple[int, ...] | None):
  """`[layers, in, out]` effective weights -> (codes, scale) stacked over layers, all exact; one
  layer at a time (`lax.map`: peak memory of one layer's intermediates)."""
  def one(w):
    t, gamma, exact = ternary_of(w, split)
    p = kernels.pack(t, gamma, split)
    return p.codes, p.scale, exact
  codes, scale, exact = jax.lax.map(one, w_eff)
  return codes, scale, jnp.all(exact)


def pack_model(model: DecoderLM, cfg: Config, *, implementation: str | None = None) -> DecoderLM:
  """The packed inference model of a trained BitNet `model` (its current effective weights,
  N:M zeros included; embeddings, norms and biases copied)."""
  check_packable(cfg)
  abstract = abstract_packed_model(cfg, model.model_cfg, implementation)
  values = {path: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for path, layer in nnx.iter_modules(model):
    if isinstance(layer, SparseBitLinear):
      codes, scale, exact = _pack_stacked(layer.effective_weight(), layer.spec.split)
      if not bool(exact):
        raise ValueError(f"layer {'/'.join(map(str, path))} has an effective weight that is not "
                         "ternary (entries other than 0 and ±gamma); it cannot be packed.")
      values[path + ("codes",)], values[path + ("scale",)] = codes, scale
  return _fill(abstract, lambda name, want: values[name])


def _fill(abstract: DecoderLM, value_of) -> DecoderLM:
  """`abstract` with each parameter set to `value_of(path, its ShapeDtypeStruct)`."""
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  for path, var in flat:
    var.set_value(jnp.asarray(value_of(path, var.get_value())))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def save_packed(path: str, model: DecoderLM, cfg: Config, tokenizer_spec: str, step: int) -> int:
  """Writes the packed `model` (from `pack_model`) to `path`; returns the file size in bytes."""
  arrays = {"/".join(map(str, p)): np.asarray(jax.device_get(v[...]))
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  meta = {"format": FORMAT, "version": VERSION, "packing_version": kernels.FORMAT_VERSION,
          "config": to_dict(cfg, model.model_cfg), "tokenizer": tokenizer_spec,
          "step": step}
  arrays[META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return os.path.getsize(path)


def read_meta(data: Any, path: str) -> dict:
  """The metadata of an opened packed checkpoint, checked against this build's versions."""
  if META not in data:
    raise ValueError(f"{path!r} is not a packed sbitnet checkpoint (no {META!r} entry); write one "
                     "with `python -m sbitnet.export --workdir=RUN --out=FILE`.")
  meta = json.loads(bytes(data[META]).decode())
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise ValueError(f"{path!r} is format {meta.get('format')!r} version {meta.get('version')}; "
                     f"this build reads {FORMAT!r} version {VERSION}. Re-export it from its "
                     "training run.")
  if meta.get("packing_version") not in READABLE_PACKING:
    raise ValueError(f"{path!r} holds weights packed in format {meta.get('packing_version')}; "
                     f"this build reads packing versions {READABLE_PACKING}. Re-export it.")
  return meta


def materialize_int8(model: DecoderLM) -> DecoderLM:
  """Calls `PackedLinear.materialize_int8` on every linear layer of `model` (in place): prefill
  and large-batch decode then skip unpacking, for 8 more bits per linear weight in memory."""
  for _, layer in nnx.iter_modules(model):
    if isinstance(layer, PackedLinear):
      layer.materialize_int8()
  return model


def load_packed(path: str, *, implementation: str | None = None, dtype: str | None = None,
                int8_weights: bool = False) -> PackedRun:
  """A packed checkpoint -> its model (linear layers through `ternary_matmul` with
  `implementation`), config, tokenizer and step. `dtype` overrides the compute dtype;
  `int8_weights` also keeps each linear weight unpacked to int8 (`materialize_int8`)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No packed checkpoint at {path!r}.")
  not_packed = (f"{path!r} is not a packed sbitnet checkpoint (the .npz file that `python -m "
                "sbitnet.export` writes)")
  try:
    data = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise ValueError(f"{not_packed}: {str(e).splitlines()[0][:200]}") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f"{not_packed}: it holds one array, not an archive.")
  with data:
    meta = read_meta(data, path)
    cfg, model_cfg = from_dict(meta["config"])
    if dtype is not None:
      model_cfg = dataclasses.replace(model_cfg, dtype=dtype)
    abstract = abstract_packed_model(cfg, model_cfg, implementation)
    expected = {"/".join(map(str, p)): v.get_value()
                for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    stored = set(data.files) - {META}
    if stored != set(expected):
      raise ValueError(f"{path!r} does not hold the model its config describes: missing "
                       f"{sorted(set(expected) - stored)}, unexpected {sorted(stored - set(expected))}.")

    def value_of(p, want):
      name = "/".join(map(str, p))
      array = data[name]
      if meta["packing_version"] == 1 and name.endswith("/codes"):
        array = np.swapaxes(array, -1, -2)
      if array.shape != want.shape or array.dtype != want.dtype:
        raise ValueError(f"{path!r}: {name} is {array.dtype} {list(array.shape)}, but its config "
                         f"describes {want.dtype} {list(want.shape)}: a checkpoint of another model.")
      return array

    model = _fill(abstract, value_of)
  if int8_weights:
    materialize_int8(model)
  return PackedRun(cfg, model_cfg, model, get_tokenizer(meta["tokenizer"]), meta["step"])


def size_report(model_cfg: ModelConfig, packed_bytes: int, path: str) -> str:
  """One paragraph: the packed file's size against the same model in bf16."""
  counts = parameter_counts(model_cfg)
  bf16 = 2 * counts["total"]
  linear_bf16 = 2 * counts["linear"]
  dense = packed_bytes - counts["linear"] // 4
  return (f"{path}: {packed_bytes / 2**20:.2f} MiB packed vs {bf16 / 2**20:.2f} MiB for the bf16 "
          f"model ({bf16 / packed_bytes:.2f}x smaller). Linear layers ({counts['linear']:,} "
          f"weights): ~{counts['linear'] / 4 / 2**20:.2f} MiB of 2-bit codes vs "
          f"{linear_bf16 / 2**20:.2f} MiB in bf16; embeddings, norms and scales: "
          f"~{dense / 2**20:.2f} MiB (float32).")
