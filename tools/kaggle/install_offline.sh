#!/usr/bin/env bash
# Install the stack from a wheelhouse (tools/kaggle/build_wheelhouse.sh output) with NO index: pip is only ever
# given --no-index --find-links WHEELHOUSE_DIR, so no network is contacted (a Kaggle notebook with internet off).
#
# Usage: install_offline.sh WHEELHOUSE_DIR          (the wheelhouse carries a copy of this script)
# Variables: PYTHON=python3 (the interpreter to install into; the notebook passes its own sys.executable)
#
# Refuses, before installing anything, a wheelhouse built for another Python (cp311 vs cp312) or against another
# torch than the one installed (onedl-mmcv's compiled ops only load into the torch they were built against). When
# the wheelhouse was built --with-torch and torch is missing, torch is installed from it first. Ends by importing
# mmcv.ops, mmdet.models, mmseg.models, ensemble and custom_modules.
set -euo pipefail

log() { printf '\033[1;34m[install_offline]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[install_offline] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 WHEELHOUSE_DIR"
WH=$1
PYTHON=${PYTHON:-python3}
[ -d "$WH" ] || die "wheelhouse folder '$WH' not found"
[ -f "$WH/manifest.json" ] || die "$WH/manifest.json not found: not a wheelhouse of tools/kaggle/build_wheelhouse.sh"
command -v "$PYTHON" >/dev/null || [ -x "$PYTHON" ] || die "$PYTHON not found (set PYTHON=...)"
PIP=("$PYTHON" -m pip install --disable-pip-version-check --no-index --find-links "$WH")

# The checks: python tag, torch (exact version incl. local tag such as +cu128, and CUDA version).
# Prints the project requirement on success; exit 3 = torch missing but in the wheelhouse.
check() {
  "$PYTHON" - "$WH/manifest.json" <<'PY'
import json, sys
path = sys.argv[1]
try:
    m = json.load(open(path))
    want_tag, want_torch, want_cuda = m["python_tag"], m["onedl_mmcv"]["built_against_torch"], m["cuda"]
    project = f"{m['project']['name']}=={m['project']['version']}"
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit(f"{path}: not a valid wheelhouse manifest ({type(e).__name__}: {e})")
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
if tag != want_tag:
    sys.exit(f"this Python is {tag} but the wheelhouse {path} was built for {want_tag}: rebuild it with this "
             f"Python (tools/kaggle/build_wheelhouse.sh)")
try:
    import torch
except ImportError:
    if m.get("with_torch"):
        sys.exit(3)
    sys.exit(f"torch is not installed; the wheelhouse was built against torch {want_torch} (CUDA {want_cuda}) "
             "and does not carry torch (build it with --with-torch, or install that torch first)")
have_cuda = torch.version.cuda
if torch.__version__ != want_torch or (have_cuda or None) != (want_cuda or None):
    sys.exit(f"installed torch {torch.__version__} (CUDA {have_cuda}) differs from torch {want_torch} "
             f"(CUDA {want_cuda}) that the wheelhouse's onedl-mmcv was built against; its compiled ops would not "
             "load. Rebuild the wheelhouse with tools/kaggle/build_wheelhouse.sh in a notebook with this torch, "
             "or select the Kaggle environment (image) the wheelhouse was built in.")
print(project)
PY
}
set +e
PROJECT=$(check)
rc=$?
set -e
if [ $rc -eq 3 ]; then
  want=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['torch'])" "$WH/manifest.json")
  log "torch missing: installing torch==$want from the wheelhouse"
  "${PIP[@]}" "torch==$want"
  PROJECT=$(check) || die "torch from the wheelhouse does not match its manifest"
elif [ $rc -ne 0 ]; then
  die "refusing to install (nothing was changed; see the message above)"
fi

log "installing $PROJECT and its dependencies from $WH (no index)"
"${PIP[@]}" "$PROJECT"
for orig in mmcv mmdet mmengine mmsegmentation mmcv-full; do
  if "$PYTHON" -m pip show -q "$orig" >/dev/null 2>&1; then
    die "the original '$orig' is installed beside the onedl forks (same import dirs): pip uninstall -y $orig"
  fi
done

"$PYTHON" - <<'PYCHECK' || die "import check failed (see above)"
import mmcv, mmcv.ops, mmdet, mmengine, mmseg, torch
import mmdet.models, mmseg.models  # noqa: F401
import ensemble, custom_modules, workflow  # noqa: F401
print(f"[install_offline] OK: torch {torch.__version__} (CUDA {torch.version.cuda}), mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__} (ops), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
PYCHECK
