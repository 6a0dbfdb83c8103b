"""Document sources: which files a config names (cheap), and their documents with the val split.

The split is by file for the text sources (key: the file's path relative to the corpus root) and by
document for JSONL/Parquet (key: `<relative path>:<line or row>`); a key goes to validation when
its hash, read as a number in [0, 1), is below `val_fraction`.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator

from sbitnet.data.config import SOURCES, DataConfig
from sbitnet.data.optional import check_available, require

# Parts of the stdlib left out of the embedded corpus: tests, installed packages, and generated
# tables (codecs, pydoc topics) that are data rather than code.
_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                          "__pycache__", "encodings", "pydoc_data"})
_EXTENSIONS = {"jsonl": ".jsonl", "parquet": ".parquet"}
_PATH_KINDS = {
    "text": "a directory (every non-hidden file under it is a document) or a glob",
    "jsonl": "a .jsonl file, a glob, or a directory of .jsonl files",
    "parquet": "a .parquet file, a glob, or a directory of .parquet files",
}


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The files of a source, listed but not read.

  Attributes:
    source: one of SOURCES other than "tokens".
    root: directory that the files' split keys are relative to.
    files: absolute paths, sorted.
    description: what the corpus is, for `Splits.describe()`.
  """
  source: str
  root: str
  files: tuple[str, ...]
  description: str


def stdlib_root() -> str:
  """The directory of this Python's standard library."""
  return sysconfig.get_paths()["stdlib"]


def split_fraction(key: str) -> float:
  """A stable hash of `key` mapped to [0, 1); independent of the Python version and process."""
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") / 2.0**64


def list_corpus(cfg: DataConfig) -> Corpus:
  """The files `cfg` names; FileNotFoundError/ValueError when there are none (nothing is read)."""
  if cfg.source not in SOURCES or cfg.source == "tokens":
    raise ValueError(f"list_corpus takes a text source {SOURCES[:-1]}, not {cfg.source!r}.")
  if cfg.source == "stdlib":
    return _stdlib_corpus(cfg.path)
  if not cfg.path:
    raise ValueError(f"Data source {cfg.source!r} needs a path: set --config.data.path to "
                     f"{_PATH_KINDS[cfg.source]}.")
  if cfg.source == "parquet":
    check_available("pyarrow", "The parquet data source")
  root, files = _expand(cfg.path, _EXTENSIONS.get(cfg.source), cfg.source)
  return Corpus(cfg.source, root, files, f"{cfg.source} {cfg.path}")


def iter_documents(corpus: Corpus, *, text_field: str,
                   val_fraction: float) -> Iterator[tuple[bool, str]]:
  """Yields `(is_val, text)` for every non-empty document, in a fixed order."""
  if corpus.source in ("stdlib", "text"):
    val = _val_files(corpus, val_fraction)
    for path in corpus.files:
      with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
      if text:
        yield path in val, text
    return
  read = _jsonl_texts if corpus.source == "jsonl" else _parquet_texts
  for path in corpus.files:
    rel = os.path.relpath(path, corpus.root)
    for index, text in read(path, text_field):
      if text:
        yield split_fraction(f"{rel}:{index}") < val_fraction, text


def _stdlib_corpus(pattern: str) -> Corpus:
  root = stdlib_root()
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
    files.extend(os.path.join(dirpath, name) for name in filenames if name.endswith(".py"))
  if pattern:
    chosen = set(glob.glob(os.path.join(root, pattern), recursive=True))
    files = [f for f in files if f in chosen]
  if not files:
    raise ValueError(f"The stdlib subset {pattern!r} matches no .py file under {root} (outside "
                     f"{sorted(_STDLIB_SKIP)}); give a glob relative to it such as 'json/*.py', "
                     f"or '' for the whole standard library.")
  version = f"{sys.version_info.major}.{sys.version_info.minor}"
  subset = f" [{pattern}]" if pattern else ""
  return Corpus("stdlib", root, tuple(sorted(files)), f"stdlib of Python {version}{subset}")


def _expand(path: str, extension: str | None, source: str) -> tuple[str, tuple[str, ...]]:
  """(root, sorted files) of a file, directory or glob."""
  if glob.has_magic(path):
    files = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
    if not files:
      raise FileNotFoundError(f"The data path {path!r} (source {source!r}) matches no file; it "
                              f"should be {_PATH_KINDS[source]}.")
    literal = []
    for part in path.split(os.sep):
      if glob.has_magic(part):
        break
      literal.append(part)
    root = os.sep.join(literal) or "."
  elif os.path.isdir(path):
    root = path
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      files.extend(os.path.join(dirpath, name) for name in filenames
                   if not name.startswith(".") and (extension is None or name.endswith(extension)))
    if not files:
      kind = f"{extension} file" if extension else "non-hidden file"
      raise ValueError(f"The data directory {path!r} (source {source!r}) holds no {kind}. The "
                       f"path should be {_PATH_KINDS[source]}; for other files pick the source "
                       "that reads them (data.source).")
  elif os.path.isfile(path):
    root, files = os.path.dirname(path) or ".", [path]
  else:
    raise FileNotFoundError(f"The data path {path!r} (source {source!r}) does not exist; it "
                            f"should be {_PATH_KINDS[source]}.")
  files = sorted(os.path.abspath(f) for f in files)
  if all(os.path.getsize(f) == 0 for f in files):
    raise ValueError(f"The data path {path!r} (source {source!r}) holds only empty files "
                     f"({len(files)}); there is no text to train on.")
  return os.path.abspath(root), tuple(files)


def _val_files(corpus: Corpus, val_fraction: float) -> frozenset[str]:
  """Files whose key hashes below `val_fraction`; at least one (the lowest hash) when there are
  two or more files, so a small corpus still has a validation split."""
  scores = {f: split_fraction(os.path.relpath(f, corpus.root)) for f in corpus.files}
  val = {f for f, score in scores.items() if score < val_fraction}
  if not val and len(scores) > 1 and val_fraction > 0:
    val = {min(scores, key=scores.get)}
  return frozenset(val)


def _jsonl_texts(path: str, text_field: str) -> Iterator[tuple[int, str]]:
  """(line number, text) of each record; bytes that are not UTF-8 become U+FFFD, as in text
  sources, and a leading byte-order mark is dropped."""
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no} is not valid JSON ({e.msg}); a JSONL file holds one "
                         f"JSON object per line.") from None
      if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}:{line_no} has no field {text_field!r} (it has {keys}); set "
                         f"--config.data.text_field to the key that holds the text.")
      yield line_no, _as_text(record[text_field], f"{path}:{line_no}", text_field)


def _parquet_texts(path: str, text_field: str) -> Iterator[tuple[int, str]]:
  pq = require("pyarrow.parquet", "The parquet data source")
  parquet = pq.ParquetFile(path)
  columns = parquet.schema_arrow.names
  if text_field not in columns:
    raise ValueError(f"{path} has no column {text_field!r} (it has {columns}); set "
                     f"--config.data.text_field to the column that holds the text.")
  row = 0
  for batch in parquet.iter_batches(columns=[text_field]):
    for value in batch.column(0).to_pylist():
      yield row, _as_text(value, f"{path} row {row}", text_field)
      row += 1


def _as_text(value: object, where: str, text_field: str) -> str:
  if value is None:
    return ""
  if not isinstance(value, str):
    raise ValueError(f"{where}: field {text_field!r} holds a {type(value).__name__}, not text.")
  return value
