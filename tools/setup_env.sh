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
#
# Environment variables (both optional):
#   NST_VENV=PATH        the virtual environment to create or reuse (default: .venv at the repo root)
#   NST_D2_SOURCE=PATH   a Detectron2 source tree (e.g. a clone of its main branch), or a .tar.gz / .tgz
#                        archive of one: installed the official way (pip install --no-build-isolation,
#                        FORCE_CUDA=0 when torch sees no CUDA), which compiles detectron2._C with the
#                        C++ compiler; without one, the Python package alone, with a warning. Also
#                        installs timm (main's ViT / MViT / Swin backbones import it). The stamp holds the
#                        source's identity (archive sha256, or tree path + git commit), so changing the
#                        source reinstalls Detectron2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NST_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PY="$VENV/bin/python"
STAMP="$VENV/.nst_det_setup"
D2_STAMP="$VENV/.nst_det_d2_source"   # identity of the Detectron2 installed from NST_D2_SOURCE
TIMM="timm==1.0.31"                    # for Detectron2 main's vit.py / mvit.py / swin.py
WANT="$(cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/setup.py" | sha256sum | cut -c1-16)"

D2_SRC=""
D2_ID=""
if [ -n "${NST_D2_SOURCE:-}" ]; then
  D2_SRC="$(realpath "$NST_D2_SOURCE" 2>/dev/null || true)"
  if [ -z "$D2_SRC" ] || [ ! -e "$D2_SRC" ]; then
    echo "[setup] ERROR: NST_D2_SOURCE=$NST_D2_SOURCE does not exist" >&2
    exit 1
  fi
  if [ -f "$D2_SRC" ]; then
    case "$D2_SRC" in
      *.tar.gz|*.tgz) D2_ID="archive sha256 $(sha256sum "$D2_SRC" | cut -d' ' -f1)" ;;
      *) echo "[setup] ERROR: NST_D2_SOURCE must be a folder or a .tar.gz/.tgz archive: $D2_SRC" >&2
         exit 1 ;;
    esac
  elif [ -f "$D2_SRC/setup.py" ] && [ -d "$D2_SRC/detectron2" ]; then
    if git -C "$D2_SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      D2_ID="tree $D2_SRC git $(git -C "$D2_SRC" rev-parse HEAD)"
      D2_ID="$D2_ID changes $(git -C "$D2_SRC" status --porcelain -- detectron2 setup.py | sha256sum | cut -c1-16)"
    else  # not a git checkout: the files' names, sizes and times stand for the commit
      D2_ID="tree $D2_SRC files $(cd "$D2_SRC" && find detectron2 setup.py -type f \
        ! -name '*.so' ! -name '*.pyc' -printf '%p %s %T@\n' | sort | sha256sum | cut -c1-16)"
    fi
  else
    echo "[setup] ERROR: NST_D2_SOURCE=$D2_SRC is not a Detectron2 source tree (no setup.py and detectron2/)" >&2
    exit 1
  fi
  WANT="$WANT | detectron2 from $D2_ID"
fi

CHECK="import torch, torchvision, detectron2, nst_det"
[ -z "$D2_SRC" ] || CHECK="$CHECK, timm"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && "$PY" -c "$CHECK" >/dev/null 2>&1; then
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

install_d2_source() {  # the Detectron2 of $D2_SRC (folder or archive) into $VENV, replacing any other
  local tmp src site cxx cuda f
  tmp="$(mktemp -d)"
  src="$D2_SRC"
  if [ -f "$D2_SRC" ]; then
    echo "[setup] unpacking $D2_SRC"
    tar xzf "$D2_SRC" -C "$tmp"
    src=""
    for f in "$tmp"/setup.py "$tmp"/*/setup.py; do  # the archive's top folder, or its root
      if [ -f "$f" ] && [ -d "$(dirname "$f")/detectron2" ]; then src="$(dirname "$f")"; break; fi
    done
    if [ -z "$src" ]; then
      echo "[setup] ERROR: $D2_SRC holds no Detectron2 source tree (setup.py beside detectron2/)" >&2
      rm -rf "$tmp"
      exit 1
    fi
  fi
  site="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
  # Whatever Detectron2 was there goes first: a pip install of it, and the copied v0.6 package
  # (which pip does not know about).
  "$PY" -m pip --disable-pip-version-check uninstall -y -q detectron2 >/dev/null 2>&1 || true
  rm -rf "$site/detectron2"
  rm -f "$D2_STAMP"

  cuda="$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")"
  cxx="${CXX:-c++}"
  if command -v "$cxx" >/dev/null 2>&1; then
    if [ "$cuda" = "1" ]; then
      echo "[setup] installing Detectron2 from $D2_SRC: compiling detectron2._C with CUDA (several minutes)"
      pip_quiet install -q --no-build-isolation "$src"
    else
      echo "[setup] installing Detectron2 from $D2_SRC: compiling detectron2._C for the CPU (FORCE_CUDA=0; about 2 minutes on 2 cores)"
      FORCE_CUDA=0 pip_quiet install -q --no-build-isolation "$src"
    fi
    "$PY" -c "import detectron2._C" || { echo "[setup] ERROR: detectron2._C was built but does not import" >&2; exit 1; }
  else
    cat >&2 <<EOF
[setup] ##########################################################################################
[setup] WARNING: no C++ compiler ('$cxx' not found; set CXX or install g++): Detectron2 from
[setup]   $D2_SRC
[setup]   is installed as the Python package ALONE, WITHOUT its compiled detectron2._C. Missing then:
[setup]   nms_rotated / batched_nms_rotated, box_iou_rotated, ROIAlignRotated (rotated boxes),
[setup]   DeformConv / ModulatedDeformConv (deformable convolution) and COCOeval_opt (the fast COCO
[setup]   evaluator). nst_det supplies a stand-in _C whose ops raise an error naming the missing op;
[setup]   Faster R-CNN with FPN needs none of them. Install g++ and rerun this script to compile _C.
[setup] ##########################################################################################
EOF
    # setup.py's install_requires, without building anything
    pip_quiet install -q "Pillow>=7.1" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" "yacs>=0.1.8" \
      tabulate cloudpickle "tqdm>4.29.0" tensorboard "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" \
      "omegaconf>=2.1,<2.4" "hydra-core>=1.1" black packaging
    cp -r "$src/detectron2" "$site/detectron2"
    rm -rf "$site/detectron2/model_zoo/configs"
    cp -r "$src/configs" "$site/detectron2/model_zoo/configs"   # what setup.py ships as package data
    local name dir
    for name in point_rend:PointRend deeplab:DeepLab panoptic_deeplab:Panoptic-DeepLab; do
      dir="$src/projects/${name#*:}/${name%%:*}"
      [ ! -d "$dir" ] || cp -r "$dir" "$site/detectron2/projects/${name%%:*}"
    done
  fi
  rm -rf "$tmp"
  echo "$D2_ID" >"$D2_STAMP"
}

if [ -n "$D2_SRC" ]; then
  if [ "$(cat "$D2_STAMP" 2>/dev/null)" != "$D2_ID" ] || ! "$PY" -c "import detectron2" >/dev/null 2>&1; then
    install_d2_source
  fi
  pip_quiet install -q "$TIMM"
elif ! "$PY" -c "import detectron2" >/dev/null 2>&1; then
  echo "[setup] installing Detectron2 v0.6 (Python package of pb1-detectron2==0.6, no compiled extension)"
  tmp="$(mktemp -d)"
  # The sdist's setup.py imports torch: hence --no-build-isolation, with torch already installed.
  pip_quiet download -q --no-deps --no-build-isolation --no-binary :all: -d "$tmp" pb1-detectron2==0.6
  tar xzf "$tmp"/pb1-detectron2-0.6.tar.gz -C "$tmp"
  site="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
  rm -rf "$site/detectron2"
  cp -r "$tmp/pb1-detectron2-0.6/detectron2" "$site/detectron2"
  rm -rf "$tmp"
  rm -f "$D2_STAMP"
fi

pip_quiet install -q --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import torch, torchvision, detectron2, nst_det; print('[setup] torch', torch.__version__, '| detectron2', detectron2.__version__, '| nst_det', nst_det.__version__)"
if [ -n "$D2_SRC" ]; then
  "$PY" -c "import importlib.util as u, detectron2, timm; print('[setup] detectron2 from $D2_SRC:', detectron2.__file__, '| compiled _C:', u.find_spec('detectron2._C') is not None, '| timm', timm.__version__)"
fi
echo "$WANT" >"$STAMP"
