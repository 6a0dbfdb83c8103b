"""The lm-evaluation-harness model "sbitnet": `lm_eval --model sbitnet --model_args workdir=DIR`.

Importing this module registers the model (lm-eval finds models only by import; run it through
`python -m sbitnet.lm_eval`, which does that). The scoring itself is `sbitnet.interop.scoring`.
"""

from __future__ import annotations

from collections import defaultdict

import lm_eval.models  # noqa: F401  (lm-eval imports its own models only into an empty registry)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from sbitnet.interop.scoring import Scorer, encode_pair, rolling_windows
from sbitnet.restore import load_run

DEFAULT_BATCH_SIZE = 8


@register_model("sbitnet")
class SbitnetLM(LM):
  """An sbitnet workdir (a training run or `python -m sbitnet.convert --from-hf` output), scored
  with the tokenizer it was trained with. Model args: `workdir`, `step` (default: latest),
  `batch_size` (rows per jitted call; "auto" = 8), `max_length` (default: the model's positions),
  `max_gen_toks` (default 256), `dtype` (compute dtype override). `device` is ignored: JAX uses
  its default devices."""

  def __init__(self, workdir: str, step: int | None = None, batch_size: int | str = "auto",
               max_length: int | None = None, max_gen_toks: int = 256, dtype: str | None = None,
               device: str | None = None, max_batch_size: int | None = None):
    super().__init__()
    del device, max_batch_size
    loaded = load_run(workdir, None if step is None else int(step), dtype=dtype)
    self.model, self.tokenizer = loaded.model, loaded.tokenizer
    rows = int(batch_size) if str(batch_size).isdigit() else DEFAULT_BATCH_SIZE
    self.scorer = Scorer(loaded.model, batch_size=rows,
                         max_length=None if max_length is None else int(max_length))
    self.max_gen_toks = int(max_gen_toks)

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    eos = self.tokenizer.eos_id
    return self.scorer.score([encode_pair(self.tokenizer, *r.args, eos) for r in requests])

  def loglikelihood_rolling(self, requests) -> list[float]:
    windows, owner = [], []
    for i, request in enumerate(requests):
      doc = rolling_windows(self.tokenizer.encode(request.args[0]), self.tokenizer.eos_id,
                            self.scorer.max_length)
      windows += doc
      owner += [i] * len(doc)
    totals = [0.0] * len(requests)
    for i, (logprob, _) in zip(owner, self.scorer.score(windows)):
      totals[i] += logprob
    return totals

  def generate_until(self, requests) -> list[str]:
    groups = defaultdict(list)
    for i, request in enumerate(requests):
      context, kwargs = request.args
      if kwargs.get("do_sample") or kwargs.get("temperature", 0.0):
        raise ValueError(f"generate_until with {kwargs} asks for sampling; the sbitnet model "
                         "generates greedily only (do_sample=False, temperature=0).")
      until = kwargs.get("until") or []
      until = (until,) if isinstance(until, str) else tuple(until)
      groups[until, int(kwargs.get("max_gen_toks", self.max_gen_toks))].append((i, context))
    outputs = [""] * len(requests)
    for (until, max_new), items in groups.items():
      prompts = [self.tokenizer.encode(context) for _, context in items]
      done = lambda ids: self._cut(ids, until)[1]
      for (i, _), ids in zip(items, self.scorer.generate(prompts, max_new, done)):
        outputs[i] = self._cut(ids, until)[0]
    return outputs

  def _cut(self, ids: list[int], until: tuple[str, ...]) -> tuple[str, bool]:
    """The text of `ids` up to eos and the first stop string, and whether one was reached."""
    eos = self.tokenizer.eos_id
    stopped = eos in ids
    text = self.tokenizer.decode(ids[:ids.index(eos)] if stopped else ids)
    for stop in until:
      if stop in text:
        text, stopped = text[:text.index(stop)], True
    return text, stopped
