"""The data section of an experiment config."""


import dataclasses

SOURCES = ("stdlib", "text", "jsonl", "parquet", "tokens")


@dataclasses.dataclass
class DataConfig:
  """Where the tokens come from and how they are cut; overridden with `--config.data.<field>=`.

  Attributes:
    source: "stdlib" (the Python standard library's own `.py` files, no network), "text" (every
      file under a directory, or a glob), "jsonl", "parquet" (one document per line / row), or
      "tokens" (a directory written by `python -m sbitnet.data.prepare`).
    path: the directory or glob for "text"; a file or glob for "jsonl"/"parquet"; the prepared
      directory for "tokens"; for "stdlib", an optional glob relative to the stdlib root that picks
      a subset (e.g. "json/*.py"), "" for the whole corpus.
    text_field: the JSONL key / Parquet column holding the document text.
    tokenizer: "byte", or the path of a SentencePiece `.model` or a Hugging Face `tokenizer.json`.
      For "tokens" the prepared directory's tokenizer is used unless this names another file.
    seq_len: tokens per training sequence.
    val_fraction: share of files (text sources) or documents (JSONL/Parquet) held out for
      validation, chosen by a hash of the file's relative path or the document's index.
    cache_dir: where tokenized corpora are cached; "" means `$XDG_CACHE_HOME/sbitnet/data`
      (`~/.cache/sbitnet/data`).
  """
  source: str = "stdlib"
  path: str = ""
  text_field: str = "text"
  tokenizer: str = "byte"
  seq_len: int = 256
  val_fraction: float = 0.05
  cache_dir: str = ""
