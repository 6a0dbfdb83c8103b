"""python -m sbitnet.export --workdir=DIR --out=FILE [--step=N]

Writes a BitNet run's packed inference checkpoint (2-bit ternary linear layers; see
`sbitnet.infer.export`) and prints its size against the bf16 model. Generate from it with
`python -m sbitnet.generate --model=FILE`.
"""

from __future__ import annotations

from absl import app, flags

from sbitnet.cli import USER_ERRORS, fail, quiet_library_logs

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Packed checkpoint file to write (.npz).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")


def main(argv: list[str]) -> None:
  del argv
  quiet_library_logs()
  from sbitnet.infer.export import check_packable, pack_model, save_packed, size_report
  from sbitnet.restore import load_run, read_config
  try:
    check_packable(read_config(_WORKDIR.value)[0])
    loaded = load_run(_WORKDIR.value, _STEP.value)
    packed = pack_model(loaded.model, loaded.cfg)
    size = save_packed(_OUT.value, packed, loaded.cfg, loaded.tokenizer.spec, loaded.step)
  except USER_ERRORS as e:
    fail(str(e))
  print(f"step {loaded.step}: " + size_report(loaded.model_cfg, size, _OUT.value))


if __name__ == "__main__":
  app.run(main)
