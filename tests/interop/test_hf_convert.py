"""HF import/export: logits against a NumPy forward pass of the HF architecture, exact round trips,
the effective-weight export, loading by eval/training, and the errors for bad checkpoints."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from sbitnet.checkpoint import CheckpointMismatch
from sbitnet.interop.hf_config import UnsupportedCheckpoint
from sbitnet.interop.hf_convert import default_tokenizer, export_hf, import_hf
from sbitnet.interop.safetensors_io import HFTensors
from sbitnet.restore import load_run, read_config
from tests.interop import hf_reference

TOKENS = np.array([1, 5, 200, 7, 9, 299, 3, 0, 4, 4, 17, 250], np.int32)


def _hf_tensors(directory):
  tensors = HFTensors(directory)
  return {name: tensors.get(name) for name in tensors.names}


def _logits(workdir):
  """The run's logits for TOKENS, from its model compiled whole (op by op takes longer)."""
  return np.asarray(_forward(load_run(workdir).model, TOKENS[None]))[0]


@jax.jit
def _forward(model, tokens):
  return model(tokens)


@pytest.mark.parametrize("arch,tie,shards", [("Qwen2ForCausalLM", False, 1),
                                             ("LlamaForCausalLM", True, 3)])
def test_imported_logits_match_numpy_reference(tmp_path, arch, tie, shards):
  config = hf_reference.hf_config(arch, tie=tie, rope_theta=5e5, rms_norm_eps=1e-5)
  tensors = hf_reference.random_tensors(config, seed=3)
  hf_reference.write_checkpoint(str(tmp_path / "hf"), config, tensors, shards=shards)
  model = import_hf(str(tmp_path / "hf"), str(tmp_path / "run"), tokenizer="byte", dtype="float32")
  assert (model.qkv_bias, model.tie_embeddings) == (arch == "Qwen2ForCausalLM", tie)
  expected = hf_reference.forward(config, tensors, TOKENS)
  np.testing.assert_allclose(_logits(str(tmp_path / "run")), expected, atol=2e-4, rtol=1e-4)


def test_imported_config_is_the_dense_full_precision_arm(qwen2_workdir):
  cfg, model = read_config(qwen2_workdir)
  assert (cfg.sparsity.n, cfg.sparsity.m, cfg.quant.weights, cfg.quant.activations) == (0, 0, "none", 0)
  assert (model.d_model, model.n_layers, model.n_heads, model.n_kv_heads, model.d_ff,
          model.vocab_size, model.rope_theta, model.max_positions) == (32, 2, 4, 2, 64, 300, 1e4, 64)
  assert cfg.data.tokenizer == "byte" and cfg.data.seq_len <= model.max_positions


def test_export_then_reimport_is_exact(qwen2_dir, qwen2_workdir, tmp_path):
  export_hf(qwen2_workdir, str(tmp_path / "hf"))
  original, exported = _hf_tensors(qwen2_dir), _hf_tensors(str(tmp_path / "hf"))
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  with open(tmp_path / "hf" / "config.json") as f:
    hf = json.load(f)
  assert hf["architectures"] == ["Qwen2ForCausalLM"] and hf["tie_word_embeddings"] is False
  import_hf(str(tmp_path / "hf"), str(tmp_path / "run"), tokenizer="byte", dtype="float32")
  np.testing.assert_array_equal(_logits(str(tmp_path / "run")), _logits(qwen2_workdir))


def test_bfloat16_export_holds_bfloat16_tensors(qwen2_workdir, tmp_path):
  export_hf(qwen2_workdir, str(tmp_path / "hf"), dtype="bfloat16")
  tensors = HFTensors(str(tmp_path / "hf"))
  assert {str(tensors.get(name).dtype) for name in tensors.names} == {"bfloat16"}


def test_fake_quant_export_reproduces_the_sparse_ternary_forward(qwen2_workdir, tmp_path):
  """A 2:4 Sparse-BitNet run (activation quant off) exported with fake_quant: the dense HF forward
  of the exported weights equals the run's own forward; the exported kernels are 2:4 and ternary."""
  run = tmp_path / "sparse_run"
  run.mkdir()
  os.symlink(os.path.join(qwen2_workdir, "checkpoints"), run / "checkpoints")
  with open(os.path.join(qwen2_workdir, "config.json")) as f:
    saved = json.load(f)
  saved["config"]["sparsity"].update(n=2, m=4)
  saved["config"]["quant"].update(weights="ternary", activations=0)
  (run / "config.json").write_text(json.dumps(saved))
  export_hf(str(run), str(tmp_path / "hf"), fake_quant=True)
  tensors = _hf_tensors(str(tmp_path / "hf"))
  with open(tmp_path / "hf" / "config.json") as f:
    config = json.load(f)
  expected = hf_reference.forward(config, tensors, TOKENS)
  np.testing.assert_allclose(_logits(str(run)), expected, atol=2e-4, rtol=1e-4)
  q = tensors["model.layers.0.self_attn.q_proj.weight"]          # torch [out, in]
  groups = q.reshape(q.shape[0], -1, 4)
  assert np.all(np.count_nonzero(groups, axis=-1) <= 2)
  assert len(np.unique(np.abs(q[q != 0]))) == 1                  # one gamma per projection


def test_training_initialises_from_imported_workdir(qwen2_workdir, tmp_path):
  """`--config.train.init_from=WORKDIR` with the imported shapes trains from the imported weights."""
  import dataclasses
  from sbitnet.train.run import prepare, train_run
  cfg, model = read_config(qwen2_workdir)
  cfg = dataclasses.replace(
      cfg, model=dataclasses.replace(model, dtype="float32"),
      sparsity=dataclasses.replace(cfg.sparsity, n=2, m=4),
      quant=dataclasses.replace(cfg.quant, weights="ternary", activations=8),
      data=dataclasses.replace(cfg.data, seq_len=32),
      train=dataclasses.replace(cfg.train, steps=1, batch_size=8, warmup_steps=1, log_every=1,
                                eval_every=1, eval_batches=1, stats_every=1, checkpoint_every=1,
                                init_from=qwen2_workdir, lr=0.0, weight_decay=0.0))
  train_run(prepare(cfg, str(tmp_path)))
  trained = load_run(str(tmp_path))
  assert trained.step == 1
  imported = nnx.state(load_run(qwen2_workdir).model, nnx.Param)
  np.testing.assert_array_equal(nnx.state(trained.model, nnx.Param)["embedding"][...],
                                imported["embedding"][...])
  bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, qkv_bias=False))
  with pytest.raises(CheckpointMismatch, match="qkv_bias"):
    prepare(bad, str(tmp_path / "other"))


def test_eval_cli_runs_on_imported_workdir(qwen2_workdir):
  result = subprocess.run([sys.executable, "-m", "sbitnet.eval", f"--workdir={qwen2_workdir}",
                           "--batches=1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "val_ppl" in result.stdout


def _write(tmp_path, config, tensors):
  directory = str(tmp_path / "hf")
  hf_reference.write_checkpoint(directory, config, tensors)
  return directory


def test_unsupported_architecture_is_named(tmp_path):
  config = hf_reference.hf_config("GPT2LMHeadModel")
  directory = _write(tmp_path, config, {})
  with pytest.raises(UnsupportedCheckpoint, match="GPT2LMHeadModel.*Qwen2ForCausalLM"):
    import_hf(directory, str(tmp_path / "run"), tokenizer="byte")


@pytest.mark.parametrize("field,value,match", [
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "llama3"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("head_dim", 16, "head_dim=16"),
])
def test_unsupported_config_field_is_named(tmp_path, field, value, match):
  config = hf_reference.hf_config("LlamaForCausalLM", **{field: value})
  directory = _write(tmp_path, config, {})
  with pytest.raises(UnsupportedCheckpoint, match=match):
    import_hf(directory, str(tmp_path / "run"), tokenizer="byte")


def test_missing_config_field_is_named(tmp_path):
  config = hf_reference.hf_config()
  del config["intermediate_size"]
  with pytest.raises(UnsupportedCheckpoint, match="lacks intermediate_size"):
    import_hf(_write(tmp_path, config, {}), str(tmp_path / "run"), tokenizer="byte")


def test_default_tokenizer_is_the_checkpoints_own(tmp_path):
  with pytest.raises(FileNotFoundError, match="--tokenizer"):
    default_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer.model").write_text("")
  assert default_tokenizer(str(tmp_path)) == str(tmp_path / "tokenizer.model")
  (tmp_path / "tokenizer.json").write_text("{}")
  assert default_tokenizer(str(tmp_path)) == str(tmp_path / "tokenizer.json")


def test_missing_tensor_is_named(tmp_path):
  config = hf_reference.hf_config()
  tensors = hf_reference.random_tensors(config)
  del tensors["model.layers.1.self_attn.k_proj.bias"]
  directory = _write(tmp_path, config, tensors)
  with pytest.raises(UnsupportedCheckpoint, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
    import_hf(directory, str(tmp_path / "run"), tokenizer="byte")
  assert not os.path.exists(tmp_path / "run")


def test_mismatched_shape_is_named(tmp_path):
  config = hf_reference.hf_config()
  tensors = hf_reference.random_tensors(config)
  tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:32]
  directory = _write(tmp_path, config, tensors)
  with pytest.raises(UnsupportedCheckpoint, match=r"mlp\.up_proj\.weight.*\[32, 32\].*\[64, 32\]"):
    import_hf(directory, str(tmp_path / "run"), tokenizer="byte")


def test_unexpected_tensor_is_named(tmp_path):
  config = hf_reference.hf_config("LlamaForCausalLM")
  tensors = hf_reference.random_tensors(config)
  tensors["model.layers.0.self_attn.o_proj.bias"] = tensors["model.norm.weight"]
  directory = _write(tmp_path, config, tensors)
  with pytest.raises(UnsupportedCheckpoint, match=r"o_proj\.bias.*drop"):
    import_hf(directory, str(tmp_path / "run"), tokenizer="byte")


def test_non_empty_workdir_is_kept_without_overwrite(qwen2_dir, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="--overwrite"):
    import_hf(qwen2_dir, str(tmp_path), tokenizer="byte")
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
  directory = _write(tmp_path, hf_reference.hf_config("GPT2LMHeadModel"), {})
  result = subprocess.run([sys.executable, "-m", "sbitnet.convert", f"--from-hf={directory}",
                           f"--workdir={tmp_path / 'run'}", "--tokenizer=byte"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2
  assert "error: Unsupported architecture ['GPT2LMHeadModel']" in result.stderr
