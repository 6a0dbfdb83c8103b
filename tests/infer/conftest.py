"""Fixtures: the tiny Sparse BitNet run of tests/conftest.py, its packed checkpoint, and oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.infer.export import pack_model, save_packed
from sbitnet.restore import load_run


@pytest.fixture(scope="session")
def workdir(default_run):
  """A 6:8 Sparse BitNet run (the default arm) of the shared tiny config, trained for 4 steps."""
  return default_run[0]


@pytest.fixture(scope="session")
def loaded(workdir):
  return load_run(workdir)


@pytest.fixture(scope="session")
def packed(loaded):
  return pack_model(loaded.model, loaded.cfg)


@pytest.fixture(scope="session")
def packed_file(loaded, packed, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("packed") / "model.npz")
  save_packed(path, packed, loaded.cfg, loaded.tokenizer.spec, loaded.step)
  return path


def full_logits(model, seq, width=64):
  """The oracle: float32 logits `[len(seq), vocab]` of one full causal forward pass (right-padded
  to `width`, which a causal model cannot see)."""
  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(seq)] = seq
  return _forward(model, jnp.asarray(tokens))[0, :len(seq)]


@jax.jit
def _forward(model, tokens):
  return model(tokens)


def greedy_by_recompute(model, prompt, steps):
  """The oracle: re-runs the whole sequence through `model` for every new token."""
  seq = list(prompt)
  for _ in range(steps):
    seq.append(int(jnp.argmax(full_logits(model, seq)[-1])))
  return seq[len(prompt):]


PROMPTS = ["def ", "import numpy as np\n", "x = 1"]


@pytest.fixture(scope="session")
def prompts(loaded):
  return [loaded.tokenizer.encode(p) for p in PROMPTS]


def assert_close(a, b, tol=1e-4):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
