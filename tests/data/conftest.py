"""Small corpora written into tmp_path."""

import json

import numpy as np
import pytest

from sbitnet import data


def random_text(rng: np.random.Generator, n: int) -> str:
  """`n` random lowercase letters and spaces: every long window occurs once."""
  return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz    "), n))


@pytest.fixture
def text_dir(tmp_path):
  """20 files `doc_XX.txt`, each starting with its marker `<doc XX>`."""
  rng = np.random.default_rng(0)
  root = tmp_path / "corpus"
  (root / "sub").mkdir(parents=True)
  for i in range(20):
    folder = root / "sub" if i % 3 == 0 else root
    (folder / f"doc_{i:02d}.txt").write_text(f"<doc {i:02d}> " + random_text(rng, 800))
  return root


@pytest.fixture
def jsonl_file(tmp_path):
  """40 JSON lines {"text": "<row XX> ...", "id": XX} and one blank line."""
  rng = np.random.default_rng(1)
  path = tmp_path / "docs.jsonl"
  lines = [json.dumps({"text": f"<row {i:02d}> " + random_text(rng, 300), "id": i})
           for i in range(40)]
  path.write_text("\n".join(lines[:20] + [""] + lines[20:]) + "\n")
  return path


@pytest.fixture
def text_splits(text_dir, tmp_path):
  return data.load_splits(data.DataConfig(source="text", path=str(text_dir), val_fraction=0.2,
                                          cache_dir=str(tmp_path / "cache")))
