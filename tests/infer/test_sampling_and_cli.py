"""Sampling options through the KV-cache generator, and the export / generate entry points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbitnet.config import to_json
from sbitnet.infer.export import load_packed
from sbitnet.infer.generation import Generator, prefill
from tests.infer.conftest import PROMPTS
from tests.train.helpers import replace, run_cli


@pytest.fixture(scope="module")
def generator(packed):
  return Generator(packed, chunk=4)


def test_top_k_1_and_tiny_top_p_are_greedy(generator, prompts):
  greedy = generator.generate(prompts, 8)
  key = jax.random.key(3)
  assert generator.generate(prompts, 8, key=key, temperature=1.5, top_k=1) == greedy
  assert generator.generate(prompts, 8, key=key, temperature=1.5, top_p=1e-6) == greedy


def test_sampling_is_seeded(generator, prompts):
  def sample(seed):
    return generator.generate(prompts, 8, key=jax.random.key(seed), temperature=2.0)
  assert sample(0) == sample(0)
  assert sample(0) != sample(1)
  assert sample(0) != generator.generate(prompts, 8)


@pytest.mark.parametrize("settings,message", [
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(temperature=1.0, top_k=-2), r"top_k=-2 must be in \[0, "),
    (dict(temperature=1.0, top_k=10**6), "top_k=1000000 must be in"),
    (dict(temperature=1.0, top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
    (dict(temperature=1.0, top_p=1.5), "top_p=1.5 must be in"),
])
def test_sampling_settings_out_of_range_are_refused(generator, prompts, settings, message):
  with pytest.raises(ValueError, match=message):
    generator.generate(prompts, 2, **settings)


def test_top_k_keeps_the_k_most_likely(packed, generator, prompts):
  """With top_k=2 every sampled first token is one of the two largest logits."""
  logits, _ = jax.jit(prefill, static_argnums=3)(packed, jnp.asarray([prompts[0]]),
                                                 jnp.asarray([len(prompts[0])]), 32)
  top2 = set(np.argsort(np.asarray(logits[0]))[-2:].tolist())
  firsts = {generator.generate(prompts[:1], 1, key=jax.random.key(s), temperature=5.0,
                               top_k=2)[0][0] for s in range(12)}
  assert firsts <= top2 and len(firsts) == 2


def test_export_and_generate_cli(workdir, packed_file, tmp_path):
  out = tmp_path / "cli.npz"
  exported = run_cli("sbitnet.export", f"--workdir={workdir}", f"--out={out}")
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert "MiB packed vs" in exported.stdout and "bf16 model" in exported.stdout
  flags = [f"--prompt={p}" for p in PROMPTS]
  # 3 prompts padded to 32 tokens: the prefill's 96 rows take the int8-weights path, which must
  # give the same tokens as the packed path (exact int32 accumulation in both).
  generated = run_cli("sbitnet.generate", f"--model={out}", *flags, "--max_new_tokens=6",
                      "--temperature=0", "--int8_weights")
  assert generated.returncode == 0, generated.stderr[-3000:]
  run = load_packed(packed_file)
  new = Generator(run.model).generate([run.tokenizer.encode(p) for p in PROMPTS], 6,
                                      done=lambda ids: ids[-1] == run.tokenizer.eos_id)
  expected = "".join(p + run.tokenizer.decode([i for i in ids if i != run.tokenizer.eos_id]) + "\n"
                     for p, ids in zip(PROMPTS, new))
  assert generated.stdout == expected
  sampled = run_cli("sbitnet.generate", f"--model={out}", "--prompt=ab", "--max_new_tokens=4",
                    "--top_k=5", "--top_p=0.9", "--seed=1", "--implementation=xla")
  assert sampled.returncode == 0 and sampled.stdout.startswith("ab"), sampled.stderr[-3000:]


def test_cli_errors(loaded, tmp_path):
  bf16 = tmp_path / "bf16"
  bf16.mkdir()
  (bf16 / "config.json").write_text(to_json(replace(loaded.cfg, "quant", weights="none"),
                                            loaded.model_cfg))
  result = run_cli("sbitnet.export", f"--workdir={bf16}", f"--out={tmp_path / 'x.npz'}")
  assert result.returncode == 2
  assert "only BitNet runs (quant.weights='ternary') can be packed" in result.stderr
  result = run_cli("sbitnet.generate", f"--model={tmp_path / 'missing.npz'}")
  assert result.returncode == 2 and "No packed checkpoint at" in result.stderr
