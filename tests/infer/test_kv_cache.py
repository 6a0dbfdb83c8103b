"""KV-cache decoding equals full recomputation: logits at every step and greedy tokens, for
batched prompts of different lengths, for the training model and the packed one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.infer.generation import Generator, bucket, decode_step, prefill
from sbitnet.nn import KVCache
from tests.infer.conftest import assert_close, full_logits, greedy_by_recompute

CONTINUATION = [ord(c) for c in "return 42"]


@pytest.fixture(params=["training", "packed"])
def model(request, loaded, packed):
  return loaded.model if request.param == "training" else packed


def test_prefill_and_decode_logits_match_full_forward(model, prompts):
  """`prefill` then `decode_step` (jitted, as Generator runs them) give the full forward pass's
  logits at each prompt's last token and at every token decoded after it."""
  lengths = np.asarray([len(p) for p in prompts], np.int32)
  width = bucket(int(lengths.max()))
  tokens = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  logits, cache = jax.jit(prefill, static_argnums=3)(
      model, jnp.asarray(tokens), jnp.asarray(lengths), width + len(CONTINUATION))
  decode = jax.jit(decode_step)
  expected = [full_logits(model, list(p) + CONTINUATION) for p in prompts]
  for step, token in enumerate(CONTINUATION):
    for row, prompt in enumerate(prompts):
      assert_close(logits[row], expected[row][len(prompt) + step - 1])
    logits, cache = decode(model, jnp.full((len(prompts),), token, jnp.int32), cache)
  np.testing.assert_array_equal(cache.lengths, lengths + len(CONTINUATION))


def test_batched_greedy_generation_equals_recompute(model, prompts):
  new = Generator(model, chunk=4).generate(prompts, 10)
  assert [len(ids) for ids in new] == [10] * len(prompts)
  for prompt, ids in zip(prompts, new):
    assert ids == greedy_by_recompute(model, prompt, 10)


def test_one_token_prompt_and_batch_independence(loaded, prompts):
  generator = Generator(loaded.model, chunk=3)
  alone = [generator.generate([p], 5)[0] for p in prompts + [[65]]]
  assert generator.generate(prompts + [[65]], 5) == alone


def test_done_stops_a_row_early(loaded, prompts):
  new = Generator(loaded.model, chunk=4).generate(prompts, 9, done=lambda ids: len(ids) == 2)
  assert [len(ids) for ids in new] == [2] * len(prompts)


def test_unstacked_model_equals_stacked(model, prompts):
  """One module per layer (what Generator runs) computes what the scanned stack computes."""
  unstacked = model.unstacked()
  assert len(unstacked.blocks) == model.model_cfg.n_layers
  assert_close(full_logits(unstacked, prompts[1]), full_logits(model, prompts[1]), tol=1e-5)
  assert unstacked.unstacked() is unstacked


@pytest.mark.parametrize("lengths", [[5], [8], [0, 5, 8]],
                         ids=["one row", "one row clamped", "three rows"])
def test_cache_write_stores_each_row_at_its_length(lengths):
  """`KVCache.write` (one row: a plain update; more: vmapped) against NumPy: each row's new
  tokens at slots lengths[b] .. + T - 1, the rest untouched, lengths unchanged; a row too full
  for its tokens is written at the last slots that hold them (clamped)."""
  b, slots, t = len(lengths), 9, 2
  cache = KVCache(jnp.arange(b * slots * 2 * 4, dtype=jnp.float32).reshape(b, slots, 2, 4),
                  -jnp.ones((b, slots, 2, 4)), jnp.asarray(lengths, jnp.int32))
  keys = 1000 + jnp.arange(b * t * 2 * 4, dtype=jnp.float32).reshape(b, t, 2, 4)
  out = jax.jit(KVCache.write)(cache, keys, -keys)
  want_k, want_v = np.array(cache.keys), np.array(cache.values)
  for row, length in enumerate(lengths):
    start = min(length, slots - t)
    want_k[row, start:start + t], want_v[row, start:start + t] = keys[row], -keys[row]
  np.testing.assert_array_equal(out.keys, want_k)
  np.testing.assert_array_equal(out.values, want_v)
  np.testing.assert_array_equal(out.lengths, lengths)
