"""Hugging Face checkpoints <-> sbitnet workdirs (local paths only; nothing is downloaded).

  python -m sbitnet.convert --from-hf=HF_DIR --workdir=OUT [--tokenizer=PATH] [--overwrite]
  python -m sbitnet.convert --to-hf=OUT_DIR --workdir=RUN [--fake-quant] [--dtype=bfloat16]

Import writes OUT as a workdir that `python -m sbitnet.eval`, `load_run` and
`--config.train.init_from=OUT` accept. Export writes config.json + model.safetensors (+ the run's
tokenizer file) for transformers' Qwen2ForCausalLM (q/k/v biases) or LlamaForCausalLM. See
docs/interop.md.
"""

from __future__ import annotations

from absl import app, flags

from sbitnet.cli import USER_ERRORS, fail, quiet_library_logs

_FROM_HF = flags.DEFINE_string("from-hf", None, "Local HF model directory to import.")
_TO_HF = flags.DEFINE_string("to-hf", None, "Directory to export the run in --workdir to.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sbitnet workdir written (import) or read "
                               "(export).", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Import: tokenizer spec for the workdir "
                                 "(default: the HF directory's tokenizer.json / tokenizer.model).")
_DTYPE = flags.DEFINE_string("dtype", None, "Import: compute dtype of the workdir's model "
                             "(auto | bfloat16 | float32; default auto). Export: tensor dtype "
                             "(float32 | bfloat16; default float32).")
_FAKE_QUANT = flags.DEFINE_bool("fake-quant", False, "Export W_eff (the N:M-masked ternary "
                                "weights the run computes with) instead of the latent weights.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Write into a non-empty output directory.")


def main(argv: list[str]) -> None:
  del argv
  quiet_library_logs()
  from sbitnet.config import read_config_json
  from sbitnet.interop.hf_convert import export_hf, import_hf
  if (_FROM_HF.value is None) == (_TO_HF.value is None):
    fail("give exactly one of --from-hf=HF_DIR (import into --workdir) or --to-hf=OUT_DIR "
         "(export --workdir).")
  try:
    if _FROM_HF.value is not None:
      model = import_hf(_FROM_HF.value, _WORKDIR.value, tokenizer=_TOKENIZER.value,
                        dtype=_DTYPE.value or "auto", overwrite=_OVERWRITE.value)
      print(f"Imported {_FROM_HF.value} into {_WORKDIR.value}: d_model={model.d_model} "
            f"n_layers={model.n_layers} n_heads={model.n_heads} n_kv_heads={model.n_kv_heads} "
            f"d_ff={model.d_ff} vocab_size={model.vocab_size} qkv_bias={model.qkv_bias} "
            f"tie_embeddings={model.tie_embeddings} rope_theta={model.rope_theta:g} "
            f"norm_eps={model.norm_eps:g}. Train from it with --config.train.init_from="
            f"{_WORKDIR.value} and these model fields.")
    else:
      arch = export_hf(_WORKDIR.value, _TO_HF.value, fake_quant=_FAKE_QUANT.value,
                       dtype=_DTYPE.value or "float32", overwrite=_OVERWRITE.value)
      weights = "effective (fake-quantized) weights" if _FAKE_QUANT.value else "latent weights"
      print(f"Exported {_WORKDIR.value} to {_TO_HF.value} as {arch} ({weights}).")
      saved = read_config_json(_WORKDIR.value, "a training run's workdir")["config"]
      ternary_or_sparse = (saved["quant"]["weights"] == "ternary" or saved["sparsity"]["n"])
      if ternary_or_sparse and not _FAKE_QUANT.value:
        print("  These are the latent weights, not the model that was evaluated (it masks and "
              "quantizes them on the fly); --fake-quant exports that one.")
      if saved["data"]["tokenizer"] == "byte":
        print("  The run's tokenizer is the byte tokenizer (no file to export): re-import with "
              "--tokenizer=byte.")
  except (*USER_ERRORS, FileExistsError) as e:
    fail(str(e))


if __name__ == "__main__":
  app.run(main)
