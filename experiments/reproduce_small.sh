#!/usr/bin/env bash
# Small-scale reproduction on one GPU, same tokens for every run:
#   the N:8 sweep (N = 7..2, 2:4, dense) for BF16 and BitNet (it contains the four arms at 6:8),
#   and dense-to-sparse BitNet 6:8 with sparse share p = 25, 50, 75, 100 %,
# on the default corpus (this Python's standard-library sources, split by file), then the table
# and plots.
#
#   bash experiments/reproduce_small.sh ROOT [OUT]    (env: STEPS=300 RUNS_PER_GPU=4)
set -euo pipefail
ROOT=${1:?usage: reproduce_small.sh ROOT [OUT]}
OUT_DIR=${2:-$ROOT/analysis}
STEPS=${STEPS:-300}
RUNS_PER_GPU=${RUNS_PER_GPU:-4}
SET=(--set=train.steps="$STEPS" --set=train.warmup_steps=$((STEPS / 10))
     --set=train.eval_every="$STEPS" --set=train.checkpoint_every="$STEPS")
python -c "from sbitnet.data import DataConfig, load_splits; print(load_splits(DataConfig()).describe())"
for experiment in nm_sweep dense_to_sparse; do
  python -m launch.sweep --experiment="experiments/$experiment.py" --scale=small --root="$ROOT" \
      --runs_per_gpu="$RUNS_PER_GPU" "${SET[@]}" || echo "some $experiment runs failed"
done
python -m experiments.analyze --root="$ROOT" --out="$OUT_DIR"
