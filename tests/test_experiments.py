"""Every experiment file loads, each sweep entry resolves to a valid config."""

import importlib
import pkgutil

import pytest

import experiments
from sbitnet.config import resolved_model, validate

NOT_EXPERIMENTS = ("common", "runs", "analyze")  # helpers, workdirs of sweeps, the analysis
MODULES = [m.name for m in pkgutil.iter_modules(experiments.__path__)
           if m.name not in NOT_EXPERIMENTS]


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("scale", ["cpu", "small", "paper"])
def test_experiment_file_loads_and_validates(name, scale):
  module = importlib.import_module(f"experiments.{name}")
  assert "python -m sbitnet.train --config=experiments/" in module.__doc__
  args = list(module.sweep(scale))
  assert args
  for arg in args:
    cfg = module.get_config(arg)
    validate(cfg, resolved_model(cfg.model, 258))


def test_bad_experiment_argument():
  from experiments import four_arms
  with pytest.raises(ValueError, match="arm='fp4' is not one of"):
    four_arms.get_config("arm=fp4")
  with pytest.raises(ValueError, match="is not key=value"):
    four_arms.get_config("size=3b")
