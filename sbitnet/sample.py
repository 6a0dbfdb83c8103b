"""python -m sbitnet.sample --workdir=DIR --prompt='def ' [--max_new_tokens=200]
[--temperature=0.8] [--top_k=0] [--top_p=1.0] [--seed=0]

Generates text from a run's latest checkpoint (the fake-quantized training model).
"""

from __future__ import annotations

from absl import app, flags

from sbitnet.cli import USER_ERRORS, fail, quiet_library_logs

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "def ", "Text to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv: list[str]) -> None:
  del argv
  quiet_library_logs()
  import jax

  from sbitnet.infer.generation import Generator
  from sbitnet.restore import load_run
  try:
    loaded = load_run(_WORKDIR.value)
    prompt = loaded.tokenizer.encode(_PROMPT.value)
    new = Generator(loaded.model).generate(
        [prompt], _MAX_NEW.value, key=jax.random.key(_SEED.value), temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value, top_p=_TOP_P.value)[0]
  except USER_ERRORS as e:
    fail(str(e))
  print(_PROMPT.value + loaded.tokenizer.decode(new))


if __name__ == "__main__":
  app.run(main)
