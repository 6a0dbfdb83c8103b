"""python -m sbitnet.lm_eval --model sbitnet --model_args workdir=DIR --tasks hellaswag,arc_easy ...

lm-evaluation-harness's own command line, with the "sbitnet" model registered first (lm-eval
discovers models only by import, so a bare `lm_eval --model sbitnet` cannot find it). Needs the
`[eval]` extra (`pip install sbitnet[eval]`).
"""

from __future__ import annotations


def main() -> None:
  try:
    import lm_eval.__main__
  except ImportError as e:
    raise SystemExit("error: python -m sbitnet.lm_eval needs lm-evaluation-harness: "
                     "pip install 'sbitnet[eval]' (or pip install lm-eval).") from e
  import sbitnet.interop.lm_eval_adapter  # noqa: F401  (registers the "sbitnet" model)
  lm_eval.__main__.cli_evaluate()


if __name__ == "__main__":
  main()
