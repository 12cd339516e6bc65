#!/usr/bin/env bash
# One-command install of the stack into .venv (called by `make install`; idempotent).
#
# Variables (all optional):
#   VENV=.venv                 where the virtual environment lives
#   PYTHON=python3.11          interpreter used to create it
#   TORCH_SPEC=torch==2.13.0   what pip installs for torch; TORCH_SPEC=keep uses the torch already importable
#                              in the venv (e.g. a CUDA build you installed first, or one seen through
#                              VENV_ARGS=--system-site-packages) and installs none
#   VENV_ARGS=                 extra arguments for `python -m venv`
#   WHEELHOUSE=<dir>           a local directory of prebuilt wheels, looked in first (onedl-mmcv)
#   MMCV_CACHE=~/.cache/sartorius-stack/mmcv   where a built onedl-mmcv wheel is kept, keyed by mmcv+torch
#   MAX_JOBS=2                 parallel compile jobs for the onedl-mmcv build
#   EXTRAS=dev,compress        extras of the project to install (dev: test/dev tools, requirements-dev.txt;
#                              compress: requirements-compress.txt); EXTRAS= installs the runtime only
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_VERSION=${MMCV_VERSION:-2.3.6}
EXTRAS=${EXTRAS-dev,compress}
MMCV_CACHE=${MMCV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sartorius-stack/mmcv}
export MAX_JOBS=${MAX_JOBS:-2}

log() { printf '\033[1;34m[install]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[install] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found: set PYTHON=/path/to/python3.11"
  log "creating $VENV with $PYTHON"
  # shellcheck disable=SC2086
  "$PYTHON" -m venv ${VENV_ARGS:-} "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

# 1. torch
if [ "$TORCH_SPEC" = "keep" ]; then
  "$PY" -c "import torch" 2>/dev/null || die "TORCH_SPEC=keep but torch is not importable in $VENV"
else
  want=${TORCH_SPEC#torch==}
  have=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    log "installing $TORCH_SPEC"
    "${PIP[@]}" "$TORCH_SPEC"
  fi
fi
TORCH_VER=$("$PY" -c "import torch; print(torch.__version__)")
log "torch $TORCH_VER"

# 2. build prerequisites and mmengine (mmcv's setup.py imports torch and mmengine)
"${PIP[@]}" -q "setuptools<81" wheel "packaging>=24.2" ninja psutil onedl-mmengine==0.10.12 \
  "numpy>=2.0,<2.3" "opencv-python>=4.8,<4.13" addict yapf Pillow pyyaml

# 3. onedl-mmcv with compiled ops, matched to this torch
mmcv_ok() { "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1; }
try_wheel() {  # $1 = wheel file; installs it and keeps it only if mmcv.ops imports
  "${PIP[@]}" -q --no-deps --force-reinstall "$1" >/dev/null 2>&1 || return 1
  if mmcv_ok; then return 0; fi
  "$PY" -m pip uninstall -y -q onedl-mmcv >/dev/null 2>&1 || true
  return 1
}
KEY="onedl_mmcv-${MMCV_VERSION}_torch-${TORCH_VER//+/_}"
CACHE_DIR="$MMCV_CACHE/$KEY"
if mmcv_ok; then
  log "onedl-mmcv $MMCV_VERSION with ops already installed"
else
  done_=0
  if [ -n "${WHEELHOUSE:-}" ] && [ -d "$WHEELHOUSE" ]; then
    for w in "$WHEELHOUSE"/onedl_mmcv-"$MMCV_VERSION"-*.whl; do
      [ -f "$w" ] || continue
      log "trying prebuilt wheel $w"
      if try_wheel "$w"; then done_=1; break; fi
      log "  $w does not import against torch $TORCH_VER; skipping it"
    done
  fi
  if [ $done_ = 0 ]; then
    for w in "$CACHE_DIR"/onedl_mmcv-*.whl; do
      [ -f "$w" ] || continue
      log "using cached build $w"
      if try_wheel "$w"; then done_=1; break; fi
    done
  fi
  if [ $done_ = 0 ]; then
    log "building onedl-mmcv $MMCV_VERSION from source against torch $TORCH_VER (MAX_JOBS=$MAX_JOBS; ~10-25 min on 2 cores)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # --no-build-isolation is essential: in an isolated build env torch is missing and the ops are silently skipped.
    "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps "onedl-mmcv==$MMCV_VERSION" -w "$tmp/raw"
    raw=$(ls "$tmp"/raw/onedl_mmcv-*.whl)
    # strip debug info (33 MB -> 1.5 MB), same code
    if command -v strip >/dev/null; then
      "$PY" -m wheel unpack "$raw" -d "$tmp/unpacked" >/dev/null
      find "$tmp/unpacked" -name '_ext*.so' -exec strip --strip-debug {} +
      mkdir -p "$tmp/stripped"
      "$PY" -m wheel pack "$tmp"/unpacked/* -d "$tmp/stripped" >/dev/null
      raw=$(ls "$tmp"/stripped/onedl_mmcv-*.whl)
    fi
    mkdir -p "$CACHE_DIR"
    cp "$raw" "$CACHE_DIR/.partial" && mv "$CACHE_DIR/.partial" "$CACHE_DIR/$(basename "$raw")"
    try_wheel "$CACHE_DIR/$(basename "$raw")" || die "built onedl-mmcv but 'import mmcv.ops' fails"
  fi
fi

# 4. the project itself (editable, so `celldata`, `ensemble`, `custom_modules` and `workflow` import) with its runtime
#    requirements (requirements.txt) and, unless EXTRAS is set otherwise, the test/dev tools (requirements-dev.txt).
#    torch and onedl-mmcv are already satisfied here, so pip changes neither.
"$PY" -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))" \
  || die "torch $TORCH_VER is older than 2.4 (requirements.txt): pip would replace it; install torch>=2.4 first"
log "installing the project with requirements.txt${EXTRAS:+ and the extras [$EXTRAS]}"
"${PIP[@]}" -q --no-build-isolation -e ".${EXTRAS:+[$EXTRAS]}"
# The mmcv wheel ships a stray top-level `docs` package; harmless, but keep the original releases out.
for orig in mmcv mmdet mmengine mmsegmentation mmcv-full; do
  if "$PY" -m pip show -q "$orig" >/dev/null 2>&1; then
    die "the original '$orig' is installed beside the onedl forks (same import dirs): pip uninstall $orig, then rerun"
  fi
done

# 5. check
"$PY" - <<'PYCHECK' || die "import check failed (see above)"
import mmcv, mmcv.ops, mmengine, mmdet, mmseg, torch
import mmdet.models, mmseg.models  # noqa: F401
import ensemble, custom_modules, workflow  # noqa: F401
print(f"[install] OK: torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops), "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
PYCHECK
