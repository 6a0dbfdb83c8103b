"""python -m sbitnet.generate --model=FILE --prompt='def ' [--prompt=...] [--max_new_tokens=200]
[--temperature=0.8] [--top_k=0] [--top_p=1.0] [--seed=0] [--implementation=xla|pallas]
[--int8_weights]

Continues each prompt with a packed inference checkpoint (`python -m sbitnet.export`), batched,
with a KV cache; a row stops at the tokenizer's eos. Prints one continuation per prompt.
"""

from __future__ import annotations

from absl import app, flags

from sbitnet.cli import USER_ERRORS, fail, quiet_library_logs

_MODEL = flags.DEFINE_string("model", None, "Packed checkpoint (.npz).", required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", ["def "], "Text to continue (repeat for a batch).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_IMPLEMENTATION = flags.DEFINE_enum("implementation", None, ["xla", "pallas"],
                                    "ternary_matmul implementation (default: by backend/shape).")
_INT8_WEIGHTS = flags.DEFINE_bool(
    "int8_weights", False, "Also keep the linear weights unpacked to int8 (8 more bits per "
    "weight): faster prefill of long prompts and large batches.")


def main(argv: list[str]) -> None:
  del argv
  quiet_library_logs()
  import jax

  from sbitnet.infer.export import load_packed
  from sbitnet.infer.generation import Generator
  try:
    run = load_packed(_MODEL.value, implementation=_IMPLEMENTATION.value,
                      int8_weights=_INT8_WEIGHTS.value)
    eos = run.tokenizer.eos_id
    prompts = [run.tokenizer.encode(p) for p in _PROMPT.value]
    new = Generator(run.model).generate(
        prompts, _MAX_NEW.value, key=jax.random.key(_SEED.value), temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value, top_p=_TOP_P.value, done=lambda ids: ids[-1] == eos)
  except USER_ERRORS as e:
    fail(str(e))
  for text, ids in zip(_PROMPT.value, new):
    print(text + run.tokenizer.decode([i for i in ids if i != eos]))


if __name__ == "__main__":
  app.run(main)
