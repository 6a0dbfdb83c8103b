"""The lm-evaluation-harness model "sbitnet" (runs only where lm-eval is installed: the [eval] extra)."""

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from sbitnet.interop.lm_eval_adapter import SbitnetLM  # noqa: E402
from sbitnet.interop.scoring import score_continuations  # noqa: E402


def _requests(kind, args):
  return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def lm(qwen2_workdir):
  model = get_model("sbitnet").create_from_arg_string(f"workdir={qwen2_workdir},batch_size=2")
  assert isinstance(model, SbitnetLM)
  return model


def test_loglikelihood_agrees_with_score_continuations(lm):
  pairs = [("The cat sat on the", " mat"), ("", "Hello"), ("1 + 1 =", " 2")]
  got = lm.loglikelihood(_requests("loglikelihood", pairs))
  expected = score_continuations(lm.model, lm.tokenizer, pairs)
  assert [g for _, g in got] == [g for _, g in expected]
  assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in expected], rel=1e-5)


def test_loglikelihood_rolling_sums_windows(lm):
  text = "for i in range(10):\n  print(i)\n"
  (total,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
  expected = score_continuations(lm.model, lm.tokenizer, [("", text)])[0][0]
  assert total == pytest.approx(expected, rel=1e-4)


def test_generate_until_stops_at_the_stop_string(lm):
  free, = lm.generate_until(_requests("generate_until", [("x = ", {"max_gen_toks": 6})]))
  assert len(free) > 1
  stop = free[len(free) // 2]
  cut, = lm.generate_until(_requests("generate_until", [("x = ", {"until": [stop],
                                                                    "max_gen_toks": 6})]))
  assert cut == free[:free.index(stop)]
  with pytest.raises(ValueError, match="greedily"):
    lm.generate_until(_requests("generate_until", [("x", {"do_sample": True})]))
