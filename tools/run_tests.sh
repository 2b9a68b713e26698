#!/usr/bin/env bash
# Set up .venv (or reuse it) and run the whole test suite on the CPU. Extra arguments go to pytest.
# NST_VENV (and NST_D2_SOURCE) are passed on to tools/setup_env.sh: NST_VENV=PATH runs the tests in
# that virtual environment instead of .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NST_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests "$@"
