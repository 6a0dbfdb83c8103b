"""python -m sbitnet.sample --workdir=DIR --prompt='def ' [--max_new_tokens=200]
[--temperature=0.8] [--top_k=0] [--top_p=1.0] [--seed=0]

Generates text from a run's latest checkpoint (the fake-quantized training model).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from sbitnet.cli import USER_ERRORS, fail

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "def ", "Text to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def generate_by_recompute(model, prompt: list[int], max_new_tokens: int, key: jax.Array,
                          **sampling) -> list[int]:
  """Continues `prompt` by re-running the whole (fixed-size, causal) window every token."""
  from sbitnet.infer.sampling import sample_tokens
  length = len(prompt) + max_new_tokens
  if length > model.model_cfg.max_positions:
    raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) = {length}"
                     f" exceeds the model's {model.model_cfg.max_positions} positions.")

  graphdef, params = nnx.split(model, nnx.Param)

  @functools.partial(jax.jit, donate_argnums=1)
  def step(params, tokens, position, key):
    logits = nnx.merge(graphdef, params)(tokens)[:, position - 1]
    token = sample_tokens(logits, key, **sampling)
    return tokens.at[:, position].set(token[0])

  tokens = jnp.zeros((1, length), jnp.int32).at[0, :len(prompt)].set(jnp.asarray(prompt))
  for position in range(len(prompt), length):
    key, sub = jax.random.split(key)
    tokens = step(params, tokens, position, sub)
  return [int(t) for t in tokens[0, len(prompt):]]


def main(argv: list[str]) -> None:
  del argv
  from sbitnet.restore import load_run
  try:
    loaded = load_run(_WORKDIR.value)
    prompt = loaded.tokenizer.encode(_PROMPT.value)
    new = generate_by_recompute(loaded.model, prompt, _MAX_NEW.value, jax.random.key(_SEED.value),
                                temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                                top_p=_TOP_P.value)
  except USER_ERRORS as e:
    fail(str(e))
  print(_PROMPT.value + loaded.tokenizer.decode(new))


if __name__ == "__main__":
  app.run(main)
