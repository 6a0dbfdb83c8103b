"""Pre-tokenizes a corpus into a directory that `source="tokens", path=DIR` reads.

  python -m sbitnet.data.prepare --source=jsonl --path='data/*.jsonl' --tokenizer=tok.model \
      --out=DIR [--val_fraction=0.05] [--text_field=text]

writes DIR/train.bin, DIR/val.bin and DIR/meta.json (see `sbitnet.data.shards`).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid

from absl import app, flags

from sbitnet.data import shards
from sbitnet.data.config import DataConfig
from sbitnet.data.sources import iter_documents
from sbitnet.data.splits import Splits, checked_corpus
from sbitnet.data.tokenizers import get_tokenizer

_DEFAULTS = DataConfig()
_SOURCE = flags.DEFINE_enum("source", _DEFAULTS.source, ["stdlib", "text", "jsonl", "parquet"],
                            "Where the documents come from.")
_PATH = flags.DEFINE_string("path", "", "Directory, file or glob (a stdlib subset glob for "
                            "source=stdlib).")
_TEXT_FIELD = flags.DEFINE_string("text_field", _DEFAULTS.text_field, "JSONL key / Parquet column.")
_TOKENIZER = flags.DEFINE_string("tokenizer", _DEFAULTS.tokenizer,
                                 "'byte', a SentencePiece .model or a tokenizer.json path.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", _DEFAULTS.val_fraction,
                                   "Share of files/documents held out for validation.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing prepared directory.")


def prepare(cfg: DataConfig, out: str, *, overwrite: bool = False) -> Splits:
  """Tokenizes `cfg`'s corpus into `out` and returns the result opened as "tokens" splits."""
  corpus = checked_corpus(cfg)
  if corpus is None:
    raise ValueError("prepare reads a text source (stdlib, text, jsonl, parquet), not 'tokens'.")
  if os.path.exists(os.path.join(out, shards.META)) and not overwrite:
    raise FileExistsError(f"{out!r} already holds prepared data ({shards.META}); pass "
                          f"--overwrite to replace it, or choose another --out.")
  if os.path.isdir(out):
    others = sorted(set(os.listdir(out)) - {shards.TRAIN, shards.VAL, shards.META})
    if others:
      raise FileExistsError(f"{out!r} holds other files ({', '.join(others[:5])}); prepare "
                            "writes into a directory of its own.")
  tokenizer = get_tokenizer(cfg.tokenizer)
  documents = iter_documents(corpus, text_field=cfg.text_field, val_fraction=cfg.val_fraction)
  # Written beside `out` and renamed into place: a failed run leaves `out` as it was.
  tmp = f"{os.path.normpath(out)}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    shards.write_shards(documents, tokenizer, tmp, info=dict(
        source=corpus.description, files=len(corpus.files), val_fraction=cfg.val_fraction))
    old = f"{os.path.normpath(out)}.old-{uuid.uuid4().hex[:8]}"
    if os.path.exists(out):
      os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  train, val, meta = shards.open_shards(out)
  return Splits(train, val, tokenizer, meta, out)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cfg = DataConfig(source=_SOURCE.value, path=_PATH.value, text_field=_TEXT_FIELD.value,
                   tokenizer=_TOKENIZER.value, val_fraction=_VAL_FRACTION.value)
  try:
    splits = prepare(cfg, _OUT.value, overwrite=_OVERWRITE.value)
  except (ValueError, OSError, ImportError) as e:
    sys.exit(f"error: {e}")
  print(f"Wrote {_OUT.value}: {splits.describe()}")


if __name__ == "__main__":
  app.run(main)
