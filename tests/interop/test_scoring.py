"""Scoring for evaluation harnesses: agreement with the model's own log-softmax, independence from
batching and bucketing, lm-eval's rolling windows and pair encoding, greedy generation."""

import jax
import numpy as np
import pytest
from flax import nnx

from sbitnet.data import get_tokenizer
from sbitnet.interop.scoring import (Scorer, bucket, encode_pair, rolling_windows,
                                     score_continuations)
from sbitnet.restore import load_run

PAIRS = [("The cat sat on the", " mat"), ("", "Hello"), ("def f(x):\n  return", " x + 1"),
         ("a b c d e f g h i j k l m n o p q r s t u v w", " x y z"), ("Q: 2+2=", "4")]


@pytest.fixture(scope="module")
def loaded(qwen2_workdir):
  return load_run(qwen2_workdir)


_call = nnx.jit(lambda model, tokens: model(tokens))


def _logits(model, tokens):
  """Logits of `tokens`, computed right-padded to the model's 64 positions (one compiled shape)."""
  padded = np.zeros((1, 64), np.int32)
  padded[0, :len(tokens)] = tokens
  return np.asarray(_call(model, padded))[0, :len(tokens)]


def _direct_score(model, context_ids, continuation_ids):
  """log p(continuation | context) and greedy-ness from one full-precision forward pass."""
  full = np.asarray(context_ids + continuation_ids, np.int32)
  logp = np.asarray(jax.nn.log_softmax(_logits(model, full[:-1]), axis=-1))
  k = len(continuation_ids)
  rows = logp[-k:]
  return float(rows[np.arange(k), full[-k:]].sum()), bool(np.all(rows.argmax(-1) == full[-k:]))


def test_score_continuations_matches_log_softmax(loaded):
  tokenizer = loaded.tokenizer
  scores = score_continuations(loaded.model, tokenizer, PAIRS, batch_size=2)
  for (context, continuation), (logprob, greedy) in zip(PAIRS, scores):
    ids = encode_pair(tokenizer, context, continuation, tokenizer.eos_id)
    expected_logprob, expected_greedy = _direct_score(loaded.model, *map(list, ids))
    assert logprob == pytest.approx(expected_logprob, rel=1e-4, abs=1e-3)
    assert greedy == expected_greedy
    assert logprob < 0


def test_greedy_continuation_is_reported_greedy(loaded):
  context = [loaded.tokenizer.eos_id] + loaded.tokenizer.encode("import ")
  greedy = Scorer(loaded.model).generate([context], 3, lambda ids: False)[0]
  scorer = Scorer(loaded.model, batch_size=2)
  (lp_greedy, is_greedy), (lp_other, is_other) = scorer.score(
      [(context, greedy), (context, greedy[:-1] + [(greedy[-1] + 1) % 256])])
  assert is_greedy and not is_other and lp_greedy > lp_other


def test_scores_do_not_depend_on_batching_or_order(loaded):
  tokenizer = loaded.tokenizer
  pairs = [encode_pair(tokenizer, c, x, tokenizer.eos_id) for c, x in PAIRS]
  one = Scorer(loaded.model, batch_size=1).score(pairs)
  many = Scorer(loaded.model, batch_size=4).score(pairs[::-1])[::-1]
  np.testing.assert_allclose([s for s, _ in one], [s for s, _ in many], rtol=1e-5, atol=1e-5)
  assert [g for _, g in one] == [g for _, g in many]


def test_long_context_is_cut_from_the_left(loaded):
  scorer = Scorer(loaded.model, max_length=16)
  context, continuation = list(range(1, 40)), [7, 8, 9]
  (logprob, _), = scorer.score([(context, continuation)])
  (kept, _), = scorer.score([(context[-14:], continuation)])
  assert logprob == pytest.approx(kept, rel=1e-6)
  with pytest.raises(ValueError, match="max_length=16"):
    scorer.score([([1], list(range(17)))])


def test_bucket_sizes():
  assert [bucket(n, 100) for n in (1, 16, 17, 33, 64, 65, 200)] == [16, 16, 32, 64, 64, 100, 100]


def test_rolling_windows_follow_lm_eval():
  """The example of lm-eval's `loglikelihood_rolling` docstring: max length 4, prefix P."""
  windows = rolling_windows(list(range(10)), prefix_id=-1, max_length=4)
  assert windows == [([-1], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
  for length in (1, 3, 7, 11):
    tokens = list(range(100, 100 + length))
    windows = rolling_windows(tokens, 0, 4)
    assert sum((cont for _, cont in windows), []) == tokens
    assert all(len(ctx) + len(cont) - 1 == min(4, length) for ctx, cont in windows[-1:])


def test_rolling_score_of_a_short_document_is_its_full_loglikelihood(loaded):
  tokens = loaded.tokenizer.encode("for i in range(10):\n  print(i)\n")
  scorer = Scorer(loaded.model, max_length=16)
  rolled = sum(lp for lp, _ in scorer.score(rolling_windows(tokens, loaded.tokenizer.eos_id, 16)))
  whole, _ = Scorer(loaded.model).score([([loaded.tokenizer.eos_id], tokens)])[0]
  assert len(tokens) > 16
  assert rolled < 0 and np.isfinite(rolled)
  assert whole == pytest.approx(
      _direct_score(loaded.model, [loaded.tokenizer.eos_id], tokens)[0], rel=1e-4)


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
  tokenizer = get_tokenizer("byte")
  assert encode_pair(tokenizer, "ab  ", "c", 257) == ([97, 98], [32, 32, 99])
  assert encode_pair(tokenizer, "", "c", 257) == ([257], [99])


def test_generate_matches_stepwise_argmax_and_stops(loaded):
  model = loaded.model
  prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10]]
  new = Scorer(model, batch_size=4).generate(prompts, 5, lambda ids: False)
  for prompt, generated in zip(prompts, new):
    tokens = list(prompt)
    for _ in range(5):
      tokens.append(int(_logits(model, tokens)[-1].argmax()))
    assert generated == tokens[len(prompt):]
  stopped = Scorer(model).generate(prompts, 5, lambda ids: len(ids) == 2)
  assert stopped == [g[:2] for g in new]
