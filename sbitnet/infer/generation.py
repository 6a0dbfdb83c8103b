"""Generation with a KV cache: a jitted prefill of right-padded prompts, then jitted decode steps.

`prefill` runs the prompts through the model once, filling a fresh cache, and returns the logits
of each row's last prompt token; `decode` samples a token from the logits in hand and feeds it back
`steps` times inside one `lax.scan`. `Generator` drives them from the host for token lists.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbitnet.infer.sampling import check_sampling, sample_tokens
from sbitnet.models import DecoderLM
from sbitnet.nn import KVCache

MIN_BUCKET = 16
DEFAULT_CHUNK = 16


def next_token_logits(model: DecoderLM, hidden: jax.Array) -> jax.Array:
  """hidden `[B, d_model]` -> float32 logits `[B, vocab]`."""
  return jnp.dot(hidden, model.head_weight().astype(hidden.dtype),
                 preferred_element_type=jnp.float32)


def prefill(model: DecoderLM, tokens: jax.Array, lengths: jax.Array,
            max_len: int) -> tuple[jax.Array, KVCache]:
  """Runs right-padded prompts through `model` into a fresh cache of `max_len` slots.

  tokens int32 `[B, T]` (row b's prompt in `tokens[b, :lengths[b]]`, the rest any padding),
  lengths int32 `[B]` in 1..T. Returns (float32 logits `[B, vocab]` of each row's last prompt
  token, the cache with `lengths` tokens per row). Padding slots hold junk that decoding overwrites
  before any query can see it.
  """
  cache = model.empty_cache(tokens.shape[0], max_len)
  hidden, cache = model.hidden_states(tokens, cache=cache)
  last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
  return next_token_logits(model, last), dataclasses.replace(cache, lengths=lengths)


def decode_step(model: DecoderLM, tokens: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Appends one token per row: tokens int32 `[B]` -> (float32 logits `[B, vocab]` of the next
  token, the cache one token longer per row)."""
  hidden, cache = model.hidden_states(tokens[:, None], cache=cache)
  return next_token_logits(model, hidden[:, 0]), cache


def decode(model: DecoderLM, logits: jax.Array, cache: KVCache, key: jax.Array, steps: int,
           **sampling) -> tuple[jax.Array, jax.Array, KVCache]:
  """`steps` times: sample a token per row from `logits` (`sample_tokens(**sampling)`), then
  `decode_step` it. Returns (int32 tokens `[B, steps]`, the logits after the last one, the cache).
  The cache needs `steps` free slots per row."""

  graphdef, state = nnx.split(model)

  def step(carry, key):
    state, logits, cache = carry
    token = sample_tokens(logits, key, **sampling)
    # NNX refuses variables traced outside a jax.lax.scan body, so the weights ride in the carry.
    logits, cache = decode_step(nnx.merge(graphdef, state), token, cache)
    return (state, logits, cache), token

  (_, logits, cache), tokens = jax.lax.scan(step, (state, logits, cache),
                                            jax.random.split(key, steps))
  return tokens.T, logits, cache


def bucket(length: int) -> int:
  """Padded prompt length: the next power of two, at least MIN_BUCKET (bounds recompiles)."""
  return max(MIN_BUCKET, 1 << (length - 1).bit_length())


class Generator:
  """Batched generation from `model` (a training `DecoderLM` or a packed one) with a KV cache.

  Prompts of different lengths are right-padded into one batch, prefilled once, then decoded
  `chunk` tokens per jitted call until every row has its tokens or is done. The generator runs
  `model.unstacked()` (one weight and cache buffer per layer, unrolled).
  """

  def __init__(self, model: DecoderLM, *, chunk: int = DEFAULT_CHUNK):
    self.graphdef, self.state = nnx.split(model.unstacked())
    self.max_positions = model.model_cfg.max_positions
    self.vocab_size = model.model_cfg.vocab_size
    self.chunk = chunk
    self._prefill = jax.jit(self._bind(prefill), static_argnames="max_len")
    self._decode = jax.jit(self._bind(decode), donate_argnames="cache",
                           static_argnames=("steps", "temperature", "top_k", "top_p"))

  def _bind(self, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def bound(state, *args, **kwargs):
      return fn(nnx.merge(self.graphdef, state), *args, **kwargs)
    return bound

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
               key: jax.Array | None = None, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, done: Callable[[list[int]], bool] | None = None
               ) -> list[list[int]]:
    """Up to `max_new_tokens` new tokens per prompt (token id lists, each non-empty).

    temperature 0 is greedy; otherwise `key` seeds the sampling (see `sample_tokens`). A row stops
    early once `done(its new tokens)` is true. Raises ValueError when a prompt plus
    `max_new_tokens` does not fit the model's `max_positions`.
    """
    self._check(prompts, max_new_tokens)
    check_sampling(temperature, top_k, top_p, self.vocab_size)
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    tokens = np.zeros((len(prompts), bucket(int(lengths.max()))), np.int32)
    for row, prompt in enumerate(prompts):
      tokens[row, :len(prompt)] = prompt
    chunks = -(-max_new_tokens // self.chunk)
    logits, cache = self._prefill(self.state, tokens, lengths,
                                  max_len=tokens.shape[1] + chunks * self.chunk)
    key = jax.random.key(0) if key is None else key
    sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    results: list[list[int]] = [[] for _ in prompts]
    finished = [max_new_tokens == 0] * len(prompts)
    for _ in range(chunks):
      key, sub = jax.random.split(key)
      new, logits, cache = self._decode(self.state, logits, cache, sub, steps=self.chunk,
                                        **sampling)
      for row, row_tokens in enumerate(np.asarray(new).tolist()):
        for token in row_tokens:
          if finished[row]:
            break
          results[row].append(token)
          finished[row] = (len(results[row]) == max_new_tokens
                           or (done is not None and done(results[row])))
      if all(finished):
        break
    return results

  def _check(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ValueError(f"generate needs at least one prompt and every prompt non-empty; got "
                       f"prompt lengths {[len(p) for p in prompts]}.")
    if max_new_tokens < 0:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0.")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > self.max_positions:
      room, new_room = self.max_positions - max_new_tokens, self.max_positions - longest
      fixes = ([f"shorten the prompt to at most {room} tokens"] if room > 0 else []) + (
          [f"ask for at most {new_room} new tokens"] if new_room > 0 else [])
      fix = " or ".join(fixes) or (f"shorten the prompt and ask for fewer than "
                                   f"{self.max_positions} new tokens")
      raise ValueError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} = "
                       f"{longest + max_new_tokens} positions exceeds the model's max_positions="
                       f"{self.max_positions}; {fix}.")
