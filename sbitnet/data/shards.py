"""The on-disk token format: `train.bin`, `val.bin` (raw little-endian token ids, documents each
followed by eos) and `meta.json`; written by `prepare` and by the tokenization cache."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from sbitnet.data.tokenizers import Tokenizer

FORMAT_VERSION = 1
META, TRAIN, VAL = "meta.json", "train.bin", "val.bin"
_FLUSH_TOKENS = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 when every id fits, else uint32."""
  return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class _Writer:
  """Appends token arrays to one file and counts them (for the unigram baseline)."""

  def __init__(self, path: str, dtype: np.dtype, vocab_size: int):
    self._file = open(path, "wb")
    self._dtype, self._vocab_size = dtype, vocab_size
    self._pending: list[np.ndarray] = []
    self._pending_tokens = 0
    self.counts = np.zeros(vocab_size, np.int64)
    self.tokens = self.docs = 0

  def add(self, ids: np.ndarray) -> None:
    self._pending.append(ids)
    self._pending_tokens += ids.size
    self.docs += 1
    if self._pending_tokens >= _FLUSH_TOKENS:
      self._flush()

  def _flush(self) -> None:
    if not self._pending:
      return
    chunk = np.concatenate(self._pending)
    if chunk.size and int(chunk.max()) >= self._vocab_size:
      raise ValueError(f"The tokenizer produced id {int(chunk.max())}, outside its vocab_size "
                       f"{self._vocab_size}.")
    chunk.tofile(self._file)
    self.counts += np.bincount(chunk, minlength=self._vocab_size)
    self.tokens += chunk.size
    self._pending, self._pending_tokens = [], 0

  def close(self) -> None:
    self._flush()
    self._file.close()


def unigram_ppl(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
  """Perplexity on val of an add-one-smoothed unigram model fit on train:
  `exp(-sum_v n_val(v) log p(v) / N_val)`, `p(v) = (n_train(v) + 1) / (N_train + V)`."""
  log_p = np.log(train_counts + 1.0) - np.log(train_counts.sum() + train_counts.size)
  return float(math.exp(-(val_counts * log_p).sum() / val_counts.sum()))


def write_shards(documents: Iterable[tuple[bool, str]], tokenizer: Tokenizer, out_dir: str, *,
                 info: dict[str, Any]) -> dict[str, Any]:
  """Tokenizes `(is_val, text)` documents into `out_dir` and returns the metadata written.

  `info` (source description, file count, val_fraction...) is stored in meta.json as is.
  meta.json is written last, so a directory without it is an interrupted write.
  """
  os.makedirs(out_dir, exist_ok=True)
  dtype = token_dtype(tokenizer.vocab_size)
  eos = np.array([tokenizer.eos_id], dtype)
  writers = {split: _Writer(os.path.join(out_dir, name), dtype, tokenizer.vocab_size)
             for split, name in ((False, TRAIN), (True, VAL))}
  try:
    for is_val, text in documents:
      writers[is_val].add(np.concatenate([tokenizer.encode_array(text, dtype), eos]))
  finally:
    for writer in writers.values():
      writer.close()
  train, val = writers[False], writers[True]
  if not train.tokens or not val.tokens:
    empty = "training" if not train.tokens else "validation"
    if train.docs + val.docs == 1:
      raise ValueError(
          f"The {empty} split is empty: the corpus is one document, and the splits are made of "
          "whole documents (files, or records of a .jsonl/.parquet). Give two or more.")
    raise ValueError(
        f"The {empty} split is empty ({train.docs} train / {val.docs} val documents, "
        f"val_fraction={info.get('val_fraction')}): the corpus is too small to split, or "
        f"val_fraction is too small. Add documents or change val_fraction "
        f"(--config.data.val_fraction; --val_fraction for sbitnet.data.prepare).")
  meta = dict(
      format_version=FORMAT_VERSION, tokenizer=tokenizer.spec, vocab_size=tokenizer.vocab_size,
      bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, dtype=dtype.str,
      train_tokens=train.tokens, val_tokens=val.tokens, train_docs=train.docs,
      val_docs=val.docs, unigram_ppl_val=unigram_ppl(train.counts, val.counts), **info)
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def read_meta(directory: str) -> dict[str, Any]:
  """meta.json of a token directory; FileNotFoundError/ValueError when it is not one."""
  path = os.path.join(directory, META)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{directory!r} is not a prepared token directory: it has no {META}. Write one with "
        f"`python -m sbitnet.data.prepare --source=... --path=... --out={directory}`.")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path} has format version {meta.get('format_version')!r}; this sbitnet "
                     f"reads version {FORMAT_VERSION}. Prepare the data again.")
  return meta


def open_shards(directory: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(train, val, meta): train/val are read-only 1-D memmaps of meta["dtype"]."""
  meta = read_meta(directory)
  dtype = np.dtype(meta["dtype"])
  arrays = []
  for name, count in ((TRAIN, meta["train_tokens"]), (VAL, meta["val_tokens"])):
    path = os.path.join(directory, name)
    size = os.path.getsize(path) if os.path.isfile(path) else -1
    if size != count * dtype.itemsize:
      raise ValueError(f"{path} should hold {count} tokens of {dtype} ({count * dtype.itemsize} "
                       f"bytes) but has {size} bytes; prepare the data again.")
    arrays.append(np.memmap(path, dtype=dtype, mode="r", shape=(count,)))
  return arrays[0], arrays[1], meta
