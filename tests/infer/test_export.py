"""The packed checkpoint: its contents, round trip, agreement with the fake-quantized training
model, and its errors."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sbitnet import kernels
from sbitnet.infer.export import META, load_packed, pack_model
from sbitnet.infer.generation import Generator
from sbitnet.infer.packed_linear import PackedLinear
from sbitnet.models import DecoderLM
from tests.infer.conftest import assert_close, full_logits
from tests.train.helpers import replace


def packed_layers(model):
  return {"/".join(map(str, p)): m for p, m in nnx.iter_modules(model)
          if isinstance(m, PackedLinear)}


def test_packed_weights_are_the_effective_ternary_weights(loaded, packed):
  layers = packed_layers(packed)
  assert set(layers) == set(loaded.model.sparse_layers()) and len(layers) == 4
  for name, layer in loaded.model.sparse_layers().items():
    w_eff = np.asarray(layer.effective_weight())
    codes, scale = layers[name].codes[...], layers[name].scale[...]
    for i in range(w_eff.shape[0]):
      p = kernels.PackedTernary(codes[i], scale[i], in_features=layer.in_features,
                                split=layer.spec.split)
      t, _ = kernels.unpack(p)
      np.testing.assert_array_equal(np.asarray(t, np.float32) * np.asarray(scale[i]), w_eff[i])
      groups = np.asarray(t).reshape(-1, 8, t.shape[1])
      assert (np.count_nonzero(groups, axis=1) <= 6).all()


def test_packed_logits_and_greedy_tokens_match_training_model(loaded, packed, prompts):
  for prompt in prompts:
    assert_close(full_logits(packed, prompt), full_logits(loaded.model, prompt), tol=1e-3)
  assert Generator(packed).generate(prompts, 12) == Generator(loaded.model).generate(prompts, 12)


def test_pallas_implementation_matches_xla(loaded, packed_file, prompts):
  tokens = jnp.asarray([prompts[1]])
  xla = load_packed(packed_file, implementation="xla").model(tokens)
  pallas = load_packed(packed_file, implementation="pallas").model(tokens)
  assert_close(pallas, xla, tol=1e-3)


def test_pallas_decode_matches_xla(packed_file, prompts):
  """Greedy decoding of one row with the Pallas kernels (interpret mode): the one-token steps run
  the dp4a GEMVs (those quantizing x themselves with the pre-norm too); the same tokens as
  XLA."""
  prompt = [prompts[0]]
  xla = Generator(load_packed(packed_file, implementation="xla").model).generate(prompt, 3)
  pallas = Generator(load_packed(packed_file, implementation="pallas").model).generate(prompt, 3)
  assert pallas == xla


def test_int8_weights_give_the_same_logits_for_large_calls(packed_file):
  """Over DECODE_MAX_M rows the materialized int8 weight replaces the per-call unpack; int32
  accumulation is exact, so the logits are equal, and the .npz stays as it was."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 200, (3, 40)), jnp.int32)
  plain = load_packed(packed_file).model
  int8 = load_packed(packed_file, int8_weights=True).model
  layers = packed_layers(int8)
  assert all(layer.weight_int8 is not None for layer in layers.values())
  layer = layers["blocks/mlp/down"]
  t = [kernels.unpack(kernels.PackedTernary(layer.codes[i], layer.scale[i],
                                            in_features=layer.in_features))[0]
       for i in range(layer.codes.shape[0])]
  np.testing.assert_array_equal(layer.weight_int8[...], np.stack(t).transpose(0, 2, 1))
  np.testing.assert_array_equal(int8(tokens), plain(tokens))
  def saved(model):  # what save_packed writes
    return {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert saved(int8) == saved(plain)


def test_round_trip(loaded, packed, packed_file):
  run = load_packed(packed_file)
  assert run.model_cfg == loaded.model_cfg and run.step == loaded.step
  assert run.tokenizer.spec == loaded.tokenizer.spec
  want = nnx.to_flat_state(nnx.state(packed, nnx.Param))
  got = dict(nnx.to_flat_state(nnx.state(run.model, nnx.Param)))
  for path, var in want:
    np.testing.assert_array_equal(np.asarray(got[path][...]), np.asarray(var[...]))
  assert os.path.getsize(packed_file) < 0.8 * 4 * sum(
      np.asarray(v[...]).size for _, v in nnx.to_flat_state(nnx.state(loaded.model, nnx.Param)))


def test_bf16_run_cannot_be_packed(loaded):
  cfg = replace(loaded.cfg, "quant", weights="none")
  model = DecoderLM(cfg, loaded.model_cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="only BitNet runs.*quant.weights='none'"):
    pack_model(model, cfg)


def rewrite(path, out, meta_change=None, drop=None):
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files if k != drop}
  meta = json.loads(bytes(arrays[META]).decode())
  if meta_change:
    meta_change(meta)
  arrays[META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  with open(out, "wb") as f:
    np.savez(f, **arrays)
  return str(out)


def test_other_version_is_refused(packed_file, tmp_path):
  bad = rewrite(packed_file, tmp_path / "v9.npz", lambda m: m.update(version=9))
  with pytest.raises(ValueError, match="version 9; this build reads 'sbitnet-packed' version 1"):
    load_packed(bad)
  bad = rewrite(packed_file, tmp_path / "p9.npz", lambda m: m.update(packing_version=9))
  with pytest.raises(ValueError, match=r"packed in format 9; this build reads packing versions "
                     r"\(1, 2\)"):
    load_packed(bad)


def test_packing_version_1_file_loads_transposed(packed_file, tmp_path):
  """A file written before format v2 (codes `[layers, Kp / 4, out]`) gives the same model."""
  v1 = tmp_path / "v1.npz"
  with np.load(packed_file) as data:
    arrays = {k: np.swapaxes(data[k], -1, -2) if k.endswith("/codes") else data[k]
              for k in data.files}
  meta = json.loads(bytes(arrays[META]).decode())
  meta["packing_version"] = 1
  arrays[META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  with open(v1, "wb") as f:
    np.savez(f, **arrays)
  want = dict(nnx.to_flat_state(nnx.state(load_packed(packed_file).model, nnx.Param)))
  got = nnx.to_flat_state(nnx.state(load_packed(str(v1)).model, nnx.Param))
  for path, var in got:
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(want[path][...]))


def test_other_model_is_refused(loaded, packed_file, tmp_path):
  def wider(meta):
    meta["config"]["resolved_model"]["d_ff"] *= 2
  with pytest.raises(ValueError, match=r"blocks/mlp/\w+/codes is uint8 \[2, \d+, \d+\], but its "
                     r"config describes uint8 \[2, \d+, \d+\]: a checkpoint of another model"):
    load_packed(rewrite(packed_file, tmp_path / "wide.npz", wider))
  with pytest.raises(ValueError, match=r"missing \['embedding'\]"):
    load_packed(rewrite(packed_file, tmp_path / "noemb.npz", drop="embedding"))
  np.savez(tmp_path / "plain.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match="not a packed sbitnet checkpoint"):
    load_packed(str(tmp_path / "plain.npz"))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="config.json' is not a packed sbitnet checkpoint"):
    load_packed(str(tmp_path / "config.json"))


def test_prompt_longer_than_positions_is_refused(packed, loaded):
  limit = loaded.model_cfg.max_positions
  with pytest.raises(ValueError, match=f"a prompt of {limit} tokens \\+ max_new_tokens=5 = "
                     f"{limit + 5} positions exceeds the model's max_positions={limit}"):
    Generator(packed).generate([[1] * limit], 5)
  with pytest.raises(ValueError, match=f"ask for at most {limit - 3} new tokens\\.$"):
    Generator(packed).generate([[1] * 3], limit)
  with pytest.raises(ValueError, match="every prompt non-empty"):
    Generator(packed).generate([[1], []], 5)
