"""Tokenizers: byte-level (default), local SentencePiece `.model`, local Hugging Face `tokenizer.json`.

Nothing is fetched from a hub: a tokenizer spec is "byte" or the path of a file.
"""

from __future__ import annotations

import os

import numpy as np

from sbitnet.data.optional import check_available, require

_VALID_SPECS = ("'byte', the path of a SentencePiece '.model' file, or the path of a Hugging Face "
                "'tokenizer.json' (any '.json' file saved by the tokenizers library)")
# Special tokens looked up, in order, in a tokenizer.json that does not say which are bos/eos.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "[CLS]")


class Tokenizer:
  """Text <-> token ids. `vocab_size` bounds every id; documents are joined with `eos_id`."""
  spec: str
  vocab_size: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def decode(self, ids: list[int]) -> str:
    raise NotImplementedError

  def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
    """`encode(text)` as a 1-D array of `dtype`."""
    return np.asarray(self.encode(text), dtype=dtype)


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes: ids 0..255 are the byte values, 256 is bos, 257 is eos; vocab_size 258."""
  spec = "byte"
  vocab_size = 258
  bos_id = 256
  eos_id = 257

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(dtype)

  def decode(self, ids: list[int]) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
  """A local SentencePiece model; bos/eos are the model's own."""

  def __init__(self, path: str):
    spm = require("sentencepiece", f"The SentencePiece tokenizer {path!r}")
    self.spec = os.path.abspath(path)
    try:
      self._sp = spm.SentencePieceProcessor(model_file=self.spec)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"Could not read {path!r} as a SentencePiece model: {e}") from e
    self.vocab_size = int(self._sp.get_piece_size())
    self.bos_id = int(self._sp.bos_id())
    self.eos_id = int(self._sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(
          f"The SentencePiece model {path!r} has no eos piece (eos_id = -1), but documents are "
          f"joined with eos. Train it with an eos piece (spm_train --eos_id=N), or use 'byte'.")
    if self.bos_id < 0:
      self.bos_id = self.eos_id

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: list[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


class HFTokenizer(Tokenizer):
  """A local Hugging Face `tokenizer.json`; eos/bos are found among its special tokens by name
  (`<|endoftext|>`, `</s>`, ...); bos falls back to eos (GPT-2 style)."""

  def __init__(self, path: str):
    tokenizers = require("tokenizers", f"The Hugging Face tokenizer {path!r}")
    self.spec = os.path.abspath(path)
    try:
      self._tok = tokenizers.Tokenizer.from_file(self.spec)
    except Exception as e:  # tokenizers raises its own exception type for a malformed file
      raise ValueError(f"Could not read {path!r} as a Hugging Face tokenizer.json: {e}") from e
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    vocab = self._tok.get_vocab(with_added_tokens=True)
    eos = [vocab[name] for name in _EOS_NAMES if name in vocab]
    if not eos:
      raise ValueError(
          f"The tokenizer {path!r} has none of the end-of-text tokens {list(_EOS_NAMES)}, but "
          f"documents are joined with eos. Add one of them as a special token, or use 'byte'.")
    self.eos_id = int(eos[0])
    bos = [vocab[name] for name in _BOS_NAMES if name in vocab]
    self.bos_id = int(bos[0]) if bos else self.eos_id

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: list[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def check_tokenizer_spec(spec: str) -> None:
  """Cheap checks of a tokenizer spec (file exists, known kind, package installed); no loading."""
  if spec == "byte":
    return
  if not spec:
    raise ValueError(f"The tokenizer is empty; valid: {_VALID_SPECS}.")
  if spec.endswith(".model"):
    kind = ("sentencepiece", "A SentencePiece tokenizer")
  elif spec.endswith(".json"):
    kind = ("tokenizers", "A Hugging Face tokenizer.json")
  else:
    raise ValueError(f"Unknown tokenizer {spec!r}: valid tokenizers are {_VALID_SPECS}. Nothing is "
                     f"downloaded from a hub; give the path of a local file.")
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"The tokenizer file {spec!r} does not exist (valid tokenizers: "
                            f"{_VALID_SPECS}; nothing is downloaded from a hub).")
  check_available(*kind)


def get_tokenizer(spec: str) -> Tokenizer:
  """The tokenizer named by `spec`: "byte", a `.model` path or a `tokenizer.json` path."""
  check_tokenizer_spec(spec)
  if spec == "byte":
    return ByteTokenizer()
  if spec.endswith(".model"):
    return SentencePieceTokenizer(spec)
  return HFTokenizer(spec)
