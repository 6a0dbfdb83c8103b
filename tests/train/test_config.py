"""Config helpers: the default run name, absolute paths, and what a resume may change."""

import dataclasses
import os

from sbitnet.config import Config, result_changes, run_name, with_absolute_paths
from sbitnet.configs.default import get_config


def test_the_default_run_is_named_by_its_preset_and_arm():
  cfg = get_config()
  assert run_name(cfg) == "tiny-sparse-bitnet-6of8"
  cfg.sparsity.n, cfg.sparsity.m, cfg.quant.weights = 2, 4, "none"
  assert run_name(cfg) == "tiny-sparse-bf16-2of4"
  cfg.sparsity.n = cfg.sparsity.m = 0
  assert run_name(cfg) == "tiny-dense-bf16"
  assert run_name(Config(name="mine")) == "mine"


def test_paths_become_absolute_except_the_stdlib_subset_and_byte(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cfg = Config()
  cfg.data.path = "json/*.py"
  assert with_absolute_paths(cfg).data == cfg.data  # stdlib subset pattern, byte tokenizer
  cfg.data.source, cfg.data.path, cfg.data.tokenizer = "text", "corpus", "tok/tokenizer.json"
  cfg.train.init_from = "runs/dense"
  out = with_absolute_paths(cfg)
  assert out.data.path == os.path.join(tmp_path, "corpus")
  assert out.data.tokenizer == os.path.join(tmp_path, "tok", "tokenizer.json")
  assert out.train.init_from == os.path.join(tmp_path, "runs", "dense")
  assert cfg.data.path == "corpus"  # the input is left as it was


def test_a_resume_may_change_cadences_and_the_name_but_not_the_experiment():
  saved = Config(name="a")
  cfg = dataclasses.replace(saved, name="b", train=dataclasses.replace(
      saved.train, log_every=7, init_from="elsewhere"), mesh=dataclasses.replace(saved.mesh, fsdp=2))
  assert result_changes(saved, cfg) == {}
  cfg.train.steps, cfg.train.lr = 999, 1.0
  assert result_changes(saved, cfg) == {"train.steps": (saved.train.steps, 999),
                                        "train.lr": (saved.train.lr, 1.0)}
