#!/usr/bin/env bash
# Create (or reuse) the virtual environment at .venv with everything nst_det needs.
# Idempotent: a second run checks a stamp and the imports, and returns in seconds.
#   - torch==2.14.1 / torchvision==0.29.1
#   - requirements.txt (Pillow<10 and setuptools<81 are pins Detectron2 v0.6 needs)
#   - Detectron2: kept if one is already importable in .venv (e.g. the official one, installed from
#     source as README.md says); otherwise the Python package of the PyPI republish pb1-detectron2==0.6,
#     taken from the sdist pip downloads (its C++ sources are absent, so it cannot be compiled; nst_det
#     supplies a stand-in for detectron2._C, see nst_det/_d2_compat.py)
#   - nst_det itself, editable
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.nst_det_setup"
WANT="$(cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/setup.py" | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$PY" -c "import torch, torchvision, detectron2, nst_det" >/dev/null 2>&1; then
  exit 0
fi

pip_quiet() {  # pip, without the index's "Location ... is ignored" noise; fails like pip
  local log rc
  log="$(mktemp)"
  set +e
  "$PY" -m pip --disable-pip-version-check "$@" >"$log" 2>&1
  rc=$?
  set -e
  grep -v "is ignored: it is neither a file nor a directory" "$log" | grep -v "^$" || true
  rm -f "$log"
  return $rc
}

echo "[setup] virtual environment: $VENV"
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
pip_quiet install -q torch==2.14.1 torchvision==0.29.1
pip_quiet install -q -r "$ROOT/requirements.txt"

if ! "$PY" -c "import detectron2" >/dev/null 2>&1; then
  echo "[setup] installing Detectron2 v0.6 (Python package of pb1-detectron2==0.6, no compiled extension)"
  tmp="$(mktemp -d)"
  # The sdist's setup.py imports torch: hence --no-build-isolation, with torch already installed.
  pip_quiet download -q --no-deps --no-build-isolation --no-binary :all: -d "$tmp" pb1-detectron2==0.6
  tar xzf "$tmp"/pb1-detectron2-0.6.tar.gz -C "$tmp"
  site="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
  rm -rf "$site/detectron2"
  cp -r "$tmp/pb1-detectron2-0.6/detectron2" "$site/detectron2"
  rm -rf "$tmp"
fi

pip_quiet install -q --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import torch, torchvision, detectron2, nst_det; print('[setup] torch', torch.__version__, '| detectron2', detectron2.__version__, '| nst_det', nst_det.__version__)"
echo "$WANT" >"$STAMP"
