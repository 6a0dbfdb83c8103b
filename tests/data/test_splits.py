import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest

from sbitnet import data
from sbitnet.data import shards, sources


def _markers(tok, stream, pattern):
  return set(re.findall(pattern, tok.decode(list(stream))))


def test_stdlib_corpus_is_the_default(tmp_path):
  splits = data.load_splits(data.DataConfig(cache_dir=str(tmp_path)))
  meta = splits.meta
  assert meta["files"] > 100 and meta["val_docs"] > 0 and meta["train_docs"] > 10 * meta["val_docs"]
  assert splits.train.dtype == np.uint16 and splits.val.dtype == np.uint16
  assert len(splits.train) == meta["train_tokens"] and len(splits.val) == meta["val_tokens"]
  assert int(splits.train[-1]) == splits.tokenizer.eos_id
  assert "stdlib of Python" in splits.describe() and f"{meta['files']} files" in splits.describe()
  assert not any(os.sep + "test" + os.sep in f or "site-packages" in f
                 for f in sources.list_corpus(data.DataConfig()).files)


def test_stdlib_subset(tmp_path):
  splits = data.load_splits(data.DataConfig(path="json/*.py", cache_dir=str(tmp_path)))
  assert splits.meta["files"] == len(sources.list_corpus(data.DataConfig(path="json/*.py")).files)
  text = splits.tokenizer.decode(list(np.concatenate([splits.train, splits.val])))
  assert "class JSONDecoder" in text and "class TestCase" not in text
  with pytest.raises(ValueError, match="no_such_dir"):
    data.validate(data.DataConfig(path="no_such_dir/*.py"))


def test_val_disjoint_from_train_by_file(text_splits):
  tok = text_splits.tokenizer
  train = _markers(tok, text_splits.train, r"<doc (\d\d)>")
  val = _markers(tok, text_splits.val, r"<doc (\d\d)>")
  assert train and val and not train & val and len(train | val) == 20
  assert text_splits.meta["train_docs"] == len(train) and text_splits.meta["val_docs"] == len(val)


def test_split_is_deterministic_and_cached(text_dir, tmp_path):
  cfg = data.DataConfig(source="text", path=str(text_dir), val_fraction=0.2,
                        cache_dir=str(tmp_path / "cache"))
  first, second = data.load_splits(cfg), data.load_splits(cfg)
  assert first.directory == second.directory
  np.testing.assert_array_equal(first.train, second.train)
  np.testing.assert_array_equal(first.val, second.val)
  (text_dir / "doc_01.txt").write_text("<doc 01> changed")
  changed = data.load_splits(cfg)
  assert changed.directory != first.directory
  assert "<doc 01> changed" in changed.tokenizer.decode(
      list(np.concatenate([changed.train, changed.val])))


def test_small_corpus_still_gets_a_val_file(tmp_path):
  for i in range(3):
    (tmp_path / f"{i}.txt").write_text(f"file {i} " * 50)
  splits = data.load_splits(data.DataConfig(source="text", path=str(tmp_path / "*.txt"),
                                            val_fraction=0.01, cache_dir=str(tmp_path / "c")))
  assert (splits.meta["train_docs"], splits.meta["val_docs"]) == (2, 1)


def test_one_document_cannot_be_split_and_says_so(tmp_path):
  (tmp_path / "one.txt").write_text("a single document " * 50)
  with pytest.raises(ValueError, match="the corpus is one document.*Give two or more"):
    data.load_splits(data.DataConfig(source="text", path=str(tmp_path / "one.txt"),
                                     cache_dir=str(tmp_path / "c")))


def test_jsonl_source(jsonl_file, tmp_path):
  splits = data.load_splits(data.DataConfig(source="jsonl", path=str(jsonl_file), val_fraction=0.25,
                                            cache_dir=str(tmp_path / "cache")))
  tok = splits.tokenizer
  train = _markers(tok, splits.train, r"<row (\d\d)>")
  val = _markers(tok, splits.val, r"<row (\d\d)>")
  assert train and val and not train & val and len(train | val) == 40
  assert splits.meta["train_docs"] + splits.meta["val_docs"] == 40
  assert int(np.sum(np.asarray(splits.train) == tok.eos_id)) == len(train)


def test_jsonl_with_a_bom_and_bytes_that_are_not_utf8_reads_as_text_sources_do(tmp_path):
  from sbitnet.data.sources import _jsonl_texts
  path = tmp_path / "mixed.jsonl"
  path.write_bytes(b'\xef\xbb\xbf{"text": "caf\xe9 ok"}\n{"text": "plain"}\n')
  assert list(_jsonl_texts(str(path), "text")) == [(1, "caf\ufffd ok"), (2, "plain")]


def test_jsonl_bad_records(tmp_path):
  path = tmp_path / "bad.jsonl"
  cfg = data.DataConfig(source="jsonl", path=str(path), cache_dir=str(tmp_path / "c"))
  path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2 has no field 'text' \(it has \['body'\]\)"):
    data.load_splits(cfg)
  path.write_text('{"text": "ok"}\nnot json\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
    data.load_splits(cfg)
  assert not [p for p in os.listdir(tmp_path / "c") if ".tmp-" in p]  # failed writes cleaned up


def test_parquet_source(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  texts = [f"<row {i:02d}> " + "x" * (i + 10) for i in range(30)]
  pq.write_table(pa.table({"body": texts, "n": list(range(30))}), tmp_path / "d.parquet")
  cfg = data.DataConfig(source="parquet", path=str(tmp_path / "*.parquet"), text_field="body",
                        val_fraction=0.3, cache_dir=str(tmp_path / "c"))
  splits = data.load_splits(cfg)
  assert splits.meta["train_docs"] + splits.meta["val_docs"] == 30 and splits.meta["val_docs"] > 0
  with pytest.raises(ValueError, match=r"no column 'text' \(it has \['body', 'n'\]\)"):
    data.load_splits(data.DataConfig(source="parquet", path=str(tmp_path / "d.parquet"),
                                     cache_dir=str(tmp_path / "c")))


def test_missing_pyarrow(tmp_path, monkeypatch):
  (tmp_path / "d.parquet").write_bytes(b"PAR1")
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "pyarrow" else real(name, *a))
  with pytest.raises(ImportError, match=r"pyarrow.*pip install sbitnet\[data\]"):
    data.validate(data.DataConfig(source="parquet", path=str(tmp_path / "d.parquet")))


@pytest.mark.parametrize("cfg, error, message", [
    (dict(source="csv"), ValueError, r"'csv'.*'stdlib', 'text', 'jsonl', 'parquet', 'tokens'"),
    (dict(source="text"), ValueError, "needs a path"),
    (dict(source="text", path="/no/such/dir"), FileNotFoundError, "/no/such/dir"),
    (dict(source="text", path="/no/such/*.txt"), FileNotFoundError, "matches no file"),
    (dict(source="jsonl", path="/no/such.jsonl"), FileNotFoundError, "/no/such.jsonl"),
    (dict(source="tokens", path="/no/such/dir"), FileNotFoundError, "prepare"),
    (dict(tokenizer="bert"), ValueError, "'bert'"),
    (dict(tokenizer="/no/tok.model"), FileNotFoundError, "/no/tok.model"),
    (dict(val_fraction=1.0), ValueError, "val_fraction"),
    (dict(seq_len=0), ValueError, "seq_len"),
])
def test_bad_config(cfg, error, message):
  with pytest.raises(error, match=message):
    data.validate(data.DataConfig(**cfg))


def test_empty_dirs(tmp_path):
  (tmp_path / ".hidden").write_text("not a document")
  with pytest.raises(ValueError, match="holds no non-hidden file"):
    data.validate(data.DataConfig(source="text", path=str(tmp_path)))
  with pytest.raises(ValueError, match="holds no .jsonl file.*pick the source that reads them"):
    data.validate(data.DataConfig(source="jsonl", path=str(tmp_path)))
  (tmp_path / "a.txt").write_text("")
  with pytest.raises(ValueError, match="only empty files"):
    data.validate(data.DataConfig(source="text", path=str(tmp_path)))


def test_unigram_baseline(text_splits):
  train = np.bincount(text_splits.train, minlength=text_splits.vocab_size)
  p = (train + 1) / (train.sum() + text_splits.vocab_size)
  expected = math.exp(-np.mean(np.log(p[np.asarray(text_splits.val)])))
  assert text_splits.unigram_ppl_val == pytest.approx(expected, rel=1e-9)
  # 27 roughly uniform symbols: the unigram PPL is near 27, far below the vocab size.
  assert 15 < text_splits.unigram_ppl_val < 40


def test_prepare_then_tokens_round_trip(text_dir, text_splits, tmp_path):
  from sbitnet.data import prepare
  cfg = data.DataConfig(source="text", path=str(text_dir), val_fraction=0.2)
  out = str(tmp_path / "prepared")
  prepare.prepare(cfg, out)
  with open(os.path.join(out, shards.META)) as f:
    meta = json.load(f)
  assert meta["format_version"] == shards.FORMAT_VERSION and meta["dtype"] == "<u2"
  tokens = data.load_splits(data.DataConfig(source="tokens", path=out))
  assert isinstance(tokens.train, np.memmap)
  np.testing.assert_array_equal(tokens.train, text_splits.train)
  np.testing.assert_array_equal(tokens.val, text_splits.val)
  assert tokens.unigram_ppl_val == text_splits.unigram_ppl_val and tokens.vocab_size == 258
  with pytest.raises(FileExistsError, match="--overwrite"):
    prepare.prepare(cfg, out)
  # A failed --overwrite leaves the prepared data as it was (it writes beside it, then renames).
  (tmp_path / "one").mkdir()
  (tmp_path / "one" / "a.txt").write_text("a single document " * 20)
  with pytest.raises(ValueError, match="one document"):
    prepare.prepare(data.DataConfig(source="text", path=str(tmp_path / "one")), out,
                    overwrite=True)
  assert sorted(os.listdir(out)) == sorted([shards.META, shards.TRAIN, shards.VAL])
  assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]
  np.testing.assert_array_equal(data.load_splits(data.DataConfig(source="tokens", path=out)).val,
                                text_splits.val)
  with open(os.path.join(out, shards.TRAIN), "ab") as f:
    f.write(b"\0\0")
  with pytest.raises(ValueError, match="prepare the data again"):
    data.load_splits(data.DataConfig(source="tokens", path=out))


def test_prepare_cli(text_dir, tmp_path):
  import subprocess
  import sys
  out = tmp_path / "out"
  args = [sys.executable, "-m", "sbitnet.data.prepare", "--source=text", f"--path={text_dir}",
          f"--out={out}", "--val_fraction=0.2"]
  run = subprocess.run(args, capture_output=True, text=True, check=True)
  assert "20 files" in run.stdout and (out / shards.META).exists()
  failed = subprocess.run(args[:3] + ["--path=/no/such/dir", f"--out={tmp_path / 'x'}"],
                          capture_output=True, text=True)
  assert failed.returncode != 0 and "/no/such/dir" in failed.stderr
  assert "Traceback" not in failed.stderr and not (tmp_path / "x").exists()
