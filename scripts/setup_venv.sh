# Sourced by the quick-start scripts: makes .venv and installs the package
# into it, once; later runs reuse it. Needs only python3 (3.11+) and pip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Reinstall only when the dependencies changed since the last install. The
# exact versions the tests passed with come from constraints.txt.
if [ ! -f .venv/.installed ] || [ setup.cfg -nt .venv/.installed ] \
    || [ pyproject.toml -nt .venv/.installed ] || [ constraints.txt -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]' -c constraints.txt
  touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
