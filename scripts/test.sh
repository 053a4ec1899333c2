#!/usr/bin/env bash
# Quick-start command 2: set up .venv if needed, then run the whole test suite.
#   bash scripts/test.sh [pytest arguments]
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
exec python -m pytest -q "$@"
