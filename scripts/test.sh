#!/usr/bin/env bash
# Quick-start command 2: set up .venv if needed, then run the whole test suite.
#   bash scripts/test.sh [pytest arguments]
source "$(dirname "${BASH_SOURCE[0]}")/setup_venv.sh"
# Tests spend much of their time tracing models, one core each: two test
# processes (more on bigger machines) use the cores that tracing leaves idle.
# Each module runs whole in one process, so a module-scoped run trains once.
exec python -m pytest -q --numprocesses=auto --maxprocesses=4 --dist=loadfile "$@"
