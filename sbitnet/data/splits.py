"""Validating a DataConfig and loading its train/val token streams (tokenizing once, then cached)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from typing import Any

import numpy as np

from sbitnet.data import shards
from sbitnet.data.config import SOURCES, DataConfig
from sbitnet.data.sources import Corpus, iter_documents, list_corpus
from sbitnet.data.tokenizers import Tokenizer, check_tokenizer_spec, get_tokenizer


@dataclasses.dataclass(frozen=True)
class Splits:
  """A corpus's token streams.

  Attributes:
    train, val: 1-D uint16 (vocab <= 65536) or uint32 read-only memmaps of token ids, every
      document followed by `tokenizer.eos_id`.
    tokenizer: the tokenizer that produced them.
    meta: the shards' meta.json (token/document/file counts, source, tokenizer spec...).
    directory: where the shards are (the prepared directory or the cache entry).
  """
  train: np.ndarray
  val: np.ndarray
  tokenizer: Tokenizer
  meta: dict[str, Any]
  directory: str

  @property
  def vocab_size(self) -> int:
    return int(self.meta["vocab_size"])

  @property
  def unigram_ppl_val(self) -> float:
    """Validation PPL of an add-one unigram model fit on train: the baseline a model must beat."""
    return float(self.meta["unigram_ppl_val"])

  def describe(self) -> str:
    """One line: source, files, documents and tokens per split, tokenizer, unigram baseline."""
    m = self.meta
    return (f"{m['source']}: {m['files']} files, {m['train_docs']:,}/{m['val_docs']:,} train/val "
            f"docs, {m['train_tokens']:,}/{m['val_tokens']:,} train/val tokens, tokenizer "
            f"{m['tokenizer']} (vocab {m['vocab_size']}), unigram val PPL {self.unigram_ppl_val:.2f}")


def validate(cfg: DataConfig) -> None:
  """Cheap checks (nothing is read or tokenized): source, path, tokenizer, seq_len, val_fraction.

  Raises ValueError / FileNotFoundError (ImportError for a missing optional package) naming the
  bad value and what would be valid.
  """
  checked_corpus(cfg)


def load_splits(cfg: DataConfig) -> Splits:
  """Opens `cfg`'s train/val streams: a prepared directory for source "tokens"; otherwise the
  corpus is tokenized once into `cfg.cache_dir`, keyed by source, files (sizes, mtimes),
  tokenizer and val_fraction, and memory-mapped from there."""
  corpus = checked_corpus(cfg)
  if corpus is None:
    train, val, meta = shards.open_shards(cfg.path)
    return Splits(train, val, _prepared_tokenizer(cfg, meta), meta, cfg.path)
  tokenizer = get_tokenizer(cfg.tokenizer)
  directory = os.path.join(_cache_root(cfg), f"{cfg.source}-{_cache_key(cfg, corpus, tokenizer)}")
  if not os.path.isfile(os.path.join(directory, shards.META)):
    _write_cache(cfg, corpus, tokenizer, directory)
  train, val, meta = shards.open_shards(directory)
  return Splits(train, val, tokenizer, meta, directory)


def checked_corpus(cfg: DataConfig) -> Corpus | None:
  """Validates `cfg`; returns its corpus listing (None for prepared "tokens")."""
  if cfg.source not in SOURCES:
    raise ValueError(f"Unknown data source {cfg.source!r}; valid sources are {list(SOURCES)} "
                     f"(set with --config.data.source).")
  if not isinstance(cfg.seq_len, int) or cfg.seq_len < 1:
    raise ValueError(f"data.seq_len must be a positive integer, not {cfg.seq_len!r}.")
  if cfg.source == "tokens":
    if not cfg.path:
      raise ValueError("Data source 'tokens' needs --config.data.path set to a directory written "
                       "by `python -m sbitnet.data.prepare`.")
    shards.read_meta(cfg.path)
    if cfg.tokenizer != "byte":
      check_tokenizer_spec(cfg.tokenizer)
    return None
  if not 0 < cfg.val_fraction < 1:
    raise ValueError(f"data.val_fraction must be in (0, 1), not {cfg.val_fraction!r}: it is the "
                     f"share of files or documents held out for validation.")
  if cfg.source in ("jsonl", "parquet") and not cfg.text_field:
    raise ValueError(f"data.text_field is empty; name the {cfg.source} field holding the text.")
  check_tokenizer_spec(cfg.tokenizer)
  return list_corpus(cfg)


def _prepared_tokenizer(cfg: DataConfig, meta: dict[str, Any]) -> Tokenizer:
  """The prepared directory's tokenizer, or `cfg.tokenizer` when it names one (a moved file)."""
  spec = cfg.tokenizer if cfg.tokenizer != "byte" else meta["tokenizer"]
  if spec != "byte" and not os.path.isfile(spec):
    raise FileNotFoundError(f"The tokenizer {spec!r} recorded in {cfg.path}/{shards.META} does not "
                            f"exist; point --config.data.tokenizer at its new location.")
  tokenizer = get_tokenizer(spec)
  if tokenizer.vocab_size != meta["vocab_size"]:
    raise ValueError(f"The tokenizer {spec!r} has vocab_size {tokenizer.vocab_size}, but {cfg.path} "
                     f"was prepared with {meta['tokenizer']!r} (vocab_size {meta['vocab_size']}).")
  return tokenizer


def _cache_root(cfg: DataConfig) -> str:
  if cfg.cache_dir:
    return cfg.cache_dir
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sbitnet", "data")


def _cache_key(cfg: DataConfig, corpus: Corpus, tokenizer: Tokenizer) -> str:
  files = []
  for path in corpus.files:
    stat = os.stat(path)
    files.append((os.path.relpath(path, corpus.root), stat.st_size, stat.st_mtime_ns))
  tokenizer_stat = None
  if tokenizer.spec != "byte":
    stat = os.stat(tokenizer.spec)
    tokenizer_stat = (stat.st_size, stat.st_mtime_ns)
  payload = dict(version=shards.FORMAT_VERSION, source=cfg.source, root=corpus.root, files=files,
                 text_field=cfg.text_field if cfg.source in ("jsonl", "parquet") else None,
                 tokenizer=tokenizer.spec, tokenizer_stat=tokenizer_stat,
                 val_fraction=cfg.val_fraction)
  return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def _write_cache(cfg: DataConfig, corpus: Corpus, tokenizer: Tokenizer, directory: str) -> None:
  """Writes into a private temporary directory and renames it into place, so concurrent
  processes (several hosts on one file system) never read a half-written entry."""
  tmp = f"{directory}.tmp-{uuid.uuid4().hex}"
  try:
    documents = iter_documents(corpus, text_field=cfg.text_field, val_fraction=cfg.val_fraction)
    shards.write_shards(documents, tokenizer, tmp, info=dict(
        source=corpus.description, files=len(corpus.files), val_fraction=cfg.val_fraction))
    try:
      os.rename(tmp, directory)
    except OSError:
      if not os.path.isfile(os.path.join(directory, shards.META)):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
