import importlib.util

import numpy as np
import pytest

from sbitnet import data
from sbitnet.data import tokenizers


def test_byte_round_trip_and_specials():
  tok = data.get_tokenizer("byte")
  text = "def f(x):\n  return 'héllo ✓'\n"
  ids = tok.encode(text)
  assert ids == list(text.encode("utf-8"))
  assert tok.decode(ids) == text
  assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (258, 256, 257)
  assert tok.decode(ids + [tok.eos_id]) == text  # specials decode to nothing
  np.testing.assert_array_equal(tok.encode_array(text, np.uint16), np.array(ids, np.uint16))


def test_unknown_tokenizer_spec(tmp_path):
  with pytest.raises(ValueError, match="gpt2.*'byte'"):
    data.get_tokenizer("gpt2")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    data.get_tokenizer(str(tmp_path / "nope.model"))


def test_missing_optional_package(tmp_path, monkeypatch):
  model = tmp_path / "tok.model"
  model.write_bytes(b"x")
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "sentencepiece" else real(name, *a))
  with pytest.raises(ImportError, match=r"sentencepiece.*pip install sbitnet\[data\]"):
    data.get_tokenizer(str(model))


def test_sentencepiece(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)))
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"),
                                 vocab_size=40, minloglevel=2)
  tok = data.get_tokenizer(str(tmp_path / "sp.model"))
  assert isinstance(tok, tokenizers.SentencePieceTokenizer)
  assert tok.vocab_size == 40 and 0 <= tok.eos_id < 40
  text = "the lazy fox jumps"
  assert tok.decode(tok.encode(text)) == text


def test_hf_tokenizer_json(tmp_path):
  hf = pytest.importorskip("tokenizers")
  model = hf.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
  tok = hf.Tokenizer(model)
  tok.pre_tokenizer = hf.pre_tokenizers.Whitespace()
  tok.add_special_tokens(["<|endoftext|>"])
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  ours = data.get_tokenizer(str(path))
  assert (ours.vocab_size, ours.eos_id, ours.bos_id) == (4, 3, 3)
  assert ours.encode("hello world") == [1, 2]
  assert ours.decode([1, 2]) == "hello world"


def test_hf_tokenizer_without_eos(tmp_path):
  hf = pytest.importorskip("tokenizers")
  path = tmp_path / "tokenizer.json"
  hf.Tokenizer(hf.models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(path))
  with pytest.raises(ValueError, match="end-of-text"):
    data.get_tokenizer(str(path))
