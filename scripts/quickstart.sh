#!/usr/bin/env bash
# Quick-start command 1: set up .venv if needed, then run the whole job on the
# generated offline sample: convert, train briefly from scratch at 32 px
# (the trainer evaluates the final model), evaluate the best checkpoint too,
# plot. A few minutes on 2 CPU cores, no network needed. The training recipe
# is scripts/recipes/quickstart.flags.
#   bash scripts/quickstart.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
set -x
python scripts/convert.py --source=sample --output_dir=records/sample
python scripts/train.py --flagfile=scripts/recipes/quickstart.flags \
  --records_dir=records/sample --model_dir=runs/quickstart
python scripts/evaluate.py --model_dir=runs/quickstart --records_dir=records/sample --model=best
python scripts/plot.py --model_dir=runs/quickstart
set +x
echo "Model:  $PWD/runs/quickstart/final.keras (SavedModel: runs/quickstart/saved_model)"
echo "Plots:  $PWD/runs/quickstart/*.png"
