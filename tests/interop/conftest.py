"""Fixtures: tiny random HF checkpoints written by the test, and their imported workdirs."""

import pytest

from sbitnet.interop.hf_convert import import_hf
from tests.interop import hf_reference


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
  """An untied Qwen2ForCausalLM checkpoint (q/k/v biases) in one safetensors file."""
  directory = str(tmp_path_factory.mktemp("qwen2"))
  config = hf_reference.hf_config("Qwen2ForCausalLM", tie=False)
  hf_reference.write_checkpoint(directory, config, hf_reference.random_tensors(config))
  return directory


@pytest.fixture(scope="module")
def qwen2_workdir(qwen2_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("qwen2_run"))
  import_hf(qwen2_dir, workdir, tokenizer="byte", dtype="float32", overwrite=True)
  return workdir
