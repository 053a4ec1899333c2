#!/usr/bin/env bash
# Quick-start command 2: set up .venv if needed, then run the whole test suite
# (pyproject.toml spreads it over the cores).
#   bash scripts/test.sh [pytest arguments]      e.g. -m "not slow": the fast tier
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
exec python -m pytest -q "$@"
