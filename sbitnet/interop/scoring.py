"""Log-likelihood scoring and greedy generation for evaluation harnesses (lm-evaluation-harness).

Requests run in batches of `batch_size` rows, right-padded to a bucketed length (the next power of
two, at least 16, at most `max_length`), so at most log2(max_length) shapes compile. Right padding
is invisible to a causal model: position t attends to positions <= t only. Generation uses the KV
cache of `sbitnet.infer.generation`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbitnet.infer.generation import Generator
from sbitnet.models import DecoderLM

TokenPair = tuple[Sequence[int], Sequence[int]]
MIN_BUCKET = 16


def bucket(length: int, max_length: int) -> int:
  """The padded length for `length` tokens: next power of two (>= MIN_BUCKET), capped."""
  return min(max(MIN_BUCKET, 1 << (length - 1).bit_length()), max_length)


def make_token_scores(graphdef: nnx.GraphDef):
  """`(params, inputs, targets)` -> (log p(target) float32 `[B, T]`, target == argmax bool
  `[B, T]`) for int32 inputs/targets `[B, T]`. Logits are formed one row at a time, so
  `[T, vocab]` float32 is the largest temporary."""

  def token_scores(params: nnx.State, inputs: jax.Array, targets: jax.Array):
    model = nnx.merge(graphdef, params)
    hidden = model.hidden_states(inputs)
    head = model.head_weight().astype(hidden.dtype)

    def row(xs):
      h, t = xs
      logits = jnp.dot(h, head, preferred_element_type=jnp.float32)
      target_logit = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
      return target_logit - jax.nn.logsumexp(logits, axis=-1), jnp.argmax(logits, axis=-1) == t

    return jax.lax.map(row, (hidden, targets))

  return token_scores


class Scorer:
  """Batched, jitted log-likelihoods and greedy continuations of token sequences for `model`."""

  def __init__(self, model: DecoderLM, *, batch_size: int = 8, max_length: int | None = None):
    graphdef, self.params = nnx.split(model, nnx.Param)
    self._token_scores = jax.jit(make_token_scores(graphdef))
    self._generator = Generator(model)
    self.batch_size = batch_size
    self.max_length = max_length or model.model_cfg.max_positions

  def score(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
    """`(context ids, continuation ids)` -> `(sum log p(continuation | context), is_greedy)`.

    The context must be non-empty (start it with bos/eos when the text has none); it is cut from
    the left to fit `max_length` tokens of input.
    """
    rows = []
    for context, continuation in pairs:
      if not context or not continuation or len(continuation) > self.max_length:
        raise ValueError(f"Cannot score a context of {len(context)} and a continuation of "
                         f"{len(continuation)} tokens: both must be non-empty and the continuation "
                         f"at most max_length={self.max_length} tokens.")
      full = list(context) + list(continuation)
      rows.append((full[:-1][-self.max_length:], full[1:][-self.max_length:], len(continuation)))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    for start in range(0, len(order), self.batch_size):
      batch = order[start:start + self.batch_size]
      length = bucket(len(rows[batch[0]][0]), self.max_length)
      inputs = np.zeros((self.batch_size, length), np.int32)
      targets = np.zeros((self.batch_size, length), np.int32)
      for r, i in enumerate(batch):
        inputs[r, :len(rows[i][0])] = rows[i][0]
        targets[r, :len(rows[i][1])] = rows[i][1]
      logprobs, greedy = jax.device_get(self._token_scores(self.params, inputs, targets))
      for r, i in enumerate(batch):
        n, k = len(rows[i][0]), rows[i][2]
        results[i] = (float(logprobs[r, n - k:n].sum()), bool(greedy[r, n - k:n].all()))
    return results

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
               done: Callable[[list[int]], bool]) -> list[list[int]]:
    """Greedy continuations of each prompt, at most `max_new_tokens` long; a row stops early once
    `done(its new tokens)` is true. Prompts are cut from the left to leave room for the new tokens."""
    keep = self.max_length - max_new_tokens
    if keep < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt within "
                       f"max_length={self.max_length}.")
    prompts = [list(p)[-keep:] for p in prompts]
    results: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), self.batch_size):
      batch = order[start:start + self.batch_size]
      new = self._generator.generate([prompts[i] for i in batch], max_new_tokens, done=done)
      for i, ids in zip(batch, new):
        results[i] = ids
    return results


def encode_pair(tokenizer, context: str, continuation: str, prefix_id: int) -> TokenPair:
  """Token ids of `(context, continuation)` as lm-evaluation-harness forms them: trailing spaces
  of the context move to the continuation, the pair is encoded whole and split where the
  context's own encoding ends; an empty context becomes `[prefix_id]`."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  if not context:
    return [prefix_id], tokenizer.encode(continuation)
  whole = tokenizer.encode(context + continuation)
  context_ids = tokenizer.encode(context)
  return whole[:len(context_ids)], whole[len(context_ids):]


def score_continuations(model: DecoderLM, tokenizer, pairs: Sequence[tuple[str, str]], *,
                        batch_size: int = 8, max_length: int | None = None
                        ) -> list[tuple[float, bool]]:
  """`(context, continuation)` strings -> `(log p(continuation | context), is_greedy)` under
  `model`, tokenized with `tokenizer` (an empty context is conditioned on its eos token)."""
  scorer = Scorer(model, batch_size=batch_size, max_length=max_length)
  return scorer.score([encode_pair(tokenizer, c, x, tokenizer.eos_id) for c, x in pairs])


def rolling_windows(tokens: Sequence[int], prefix_id: int, max_length: int) -> list[TokenPair]:
  """Disjoint `(context, continuation)` windows that predict every token of `tokens` once, each
  with as much context as fits in `max_length` (lm-evaluation-harness's rolling log-likelihood;
  the first token is conditioned on `prefix_id`)."""
  tokens = list(tokens)
  windows = []
  predicted = 0
  while predicted < len(tokens):
    end = min(predicted + max_length, len(tokens))
    context = ([prefix_id] + tokens)[max(0, end - max_length):predicted + 1]
    windows.append((context, tokens[predicted:end]))
    predicted = end
  return windows
