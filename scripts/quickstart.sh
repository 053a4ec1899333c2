#!/usr/bin/env bash
# Quick-start command 1: set up .venv if needed, then run the job on the
# generated offline sample: convert it to TFRecords and verify them.
#   bash scripts/quickstart.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
python scripts/convert.py --source=sample --output_dir=records/sample
python scripts/convert.py --verify --output_dir=records/sample
echo "Records and manifest: $PWD/records/sample"
