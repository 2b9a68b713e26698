#!/usr/bin/env bash
# Set up .venv (or reuse it) and run nst_det's demo on built-in data. Extra arguments go to tools/demo.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/tools/demo.py" "$@"
