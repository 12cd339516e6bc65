#!/usr/bin/env bash
# Build a wheelhouse of the stack for THIS interpreter and THIS torch, for an offline install
# (tools/kaggle/install_offline.sh). Run it where the internet and the target torch are: a Kaggle notebook with
# internet on (then save OUT_DIR as a dataset), or this machine for a CPU wheelhouse.
#
# Usage: tools/kaggle/build_wheelhouse.sh OUT_DIR [--with-torch] [--extra PKG]...
#   --with-torch   also put torch (exactly the installed build, e.g. 2.13.0+cpu, from the configured index/find-links)
#                  and its dependencies in the wheelhouse; by default torch is left out (Kaggle's image has it, and
#                  the install checks it matches). A +cuXXX build needs an index that serves it (PIP_EXTRA_INDEX_URL).
#   --extra PKG    also wheel PKG and its dependencies (e.g. --extra ipykernel for a fresh venv's notebook kernel)
# Variables (all optional):
#   PYTHON=python3             the interpreter the wheelhouse is for (must import torch)
#   WHEELHOUSE=<dir>           prebuilt onedl-mmcv wheels to try before compiling (used only if one imports
#                              against this torch)
#   MMCV_VERSION=2.3.6  MAX_JOBS=<nproc>  FORCE_CUDA=1 (CUDA ops without a visible GPU; needs nvcc)
#
# OUT_DIR gets: onedl_mmcv (compiled ops, debug info stripped), the pure-Python forks built into wheels, every
# runtime dependency of requirements.txt, the project's own wheel (the notebook runs its tools as python -m
# workflow.cli.<tool>), install_offline.sh and manifest.json (each file's name, version, sha256 and size; the Python
# tag; the torch + CUDA onedl-mmcv was built against). Built in OUT_DIR.partial, renamed at the end: a failed
# build leaves no OUT_DIR.
set -euo pipefail

log() { printf '\033[1;34m[wheelhouse]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[wheelhouse] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

OUT=""
WITH_TORCH=0
EXTRAS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --with-torch) WITH_TORCH=1 ;;
    --extra) [ $# -ge 2 ] || die "--extra needs a package"; EXTRAS+=("$2"); shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$OUT" ] || die "one OUT_DIR only"; OUT=$1 ;;
  esac
  shift
done
[ -n "$OUT" ] || die "usage: $0 OUT_DIR [--with-torch] [--extra PKG]..."
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then die "$OUT exists and is not empty"; fi

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}
MMCV_VERSION=${MMCV_VERSION:-2.3.6}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
command -v "$PYTHON" >/dev/null || [ -x "$PYTHON" ] || die "$PYTHON not found (set PYTHON=...)"
PIP=("$PYTHON" -m pip --disable-pip-version-check)

read -r PYTAG TORCH_VER TORCH_CUDA TORCH_DIR < <("$PYTHON" - <<'PY' || true
import sys
try:
    import torch
except ImportError:
    sys.exit(1)
import os
print(f"cp{sys.version_info.major}{sys.version_info.minor}", torch.__version__, torch.version.cuda or "none",
      os.path.dirname(torch.__file__))
PY
)
[ -n "${TORCH_VER:-}" ] || die "torch is not importable by $PYTHON: install the torch the target runs first"
log "python $PYTAG, torch $TORCH_VER (CUDA $TORCH_CUDA), MAX_JOBS=$MAX_JOBS"

PART="$OUT.partial"
rm -rf "$PART"
mkdir -p "$PART"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# build prerequisites of onedl-mmcv's setup.py (imports torch and mmengine; ops need ninja)
"${PIP[@]}" install -q "setuptools<81" wheel "packaging>=24.2" ninja psutil onedl-mmengine==0.10.12

# 1. onedl-mmcv with ops for this torch: a given prebuilt wheel when one imports here, else compiled
mmcv_imports() {  # $1 = wheel: installs it into a scratch target and imports mmcv.ops from there
  rm -rf "$TMP/probe" && "${PIP[@]}" install -q --no-deps --no-index --target "$TMP/probe" "$1" >/dev/null 2>&1 \
    && PYTHONPATH="$TMP/probe" "$PYTHON" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" \
      >/dev/null 2>&1
}
MMCV_WHEEL=""
MMCV_SOURCE=""
if [ -n "${WHEELHOUSE:-}" ]; then
  for w in "$WHEELHOUSE"/onedl_mmcv-"$MMCV_VERSION"-"$PYTAG"-*.whl; do
    [ -f "$w" ] || continue
    if mmcv_imports "$w"; then MMCV_WHEEL=$w; MMCV_SOURCE="prebuilt $(basename "$w")"; break; fi
    log "$(basename "$w") does not import against torch $TORCH_VER; not used"
  done
fi
if [ -z "$MMCV_WHEEL" ]; then
  log "compiling onedl-mmcv $MMCV_VERSION against torch $TORCH_VER (about 10 min on 2 cores; CUDA ops add more)"
  "${PIP[@]}" download -q --no-deps --no-binary :all: "onedl-mmcv==$MMCV_VERSION" -d "$TMP/sdist"
  mkdir -p "$TMP/src" && tar -xzf "$TMP"/sdist/onedl_mmcv-*.tar.gz -C "$TMP/src"
  SRC=$(ls -d "$TMP"/src/*/)
  # torch >= 2.14 headers refuse C++17 ("C++20 or later compatible compiler is required"); mmcv passes -std=c++17
  if grep -rqs "C++20 or later compatible compiler is required" "$TORCH_DIR/include"; then
    log "torch's headers need C++20: building with -std=c++20"
    sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
  fi
  # --no-build-isolation is essential: in an isolated build torch is missing and the ops are silently skipped
  "${PIP[@]}" wheel --no-build-isolation --no-deps "$SRC" -w "$TMP/raw"
  raw=$(ls "$TMP"/raw/onedl_mmcv-*.whl)
  if command -v strip >/dev/null; then  # debug info: ~33 MB -> ~1.5 MB for the CPU ops, same code
    "$PYTHON" -m wheel unpack "$raw" -d "$TMP/unpacked" >/dev/null
    find "$TMP/unpacked" -name '*.so' -exec strip --strip-debug {} +
    mkdir -p "$TMP/stripped" && "$PYTHON" -m wheel pack "$TMP"/unpacked/* -d "$TMP/stripped" >/dev/null
    raw=$(ls "$TMP"/stripped/onedl_mmcv-*.whl)
  fi
  mmcv_imports "$raw" || die "built onedl-mmcv but 'import mmcv.ops' fails with it"
  MMCV_WHEEL=$raw
  MMCV_SOURCE="compiled here"
fi
cp "$MMCV_WHEEL" "$PART/"
log "onedl-mmcv: $(basename "$MMCV_WHEEL") ($MMCV_SOURCE)"

# 2. the project's own wheel
"${PIP[@]}" wheel -q --no-deps --no-build-isolation "$REPO" -w "$PART"

# 3. every runtime dependency (requirements.txt minus torch and onedl-mmcv), the forks' sdists built into wheels
mapfile -t REQS < <("$PYTHON" - "$REPO/requirements.txt" "$WITH_TORCH" "$TORCH_VER" <<'PY'
import sys
from packaging.requirements import Requirement
path, with_torch, torch_ver = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
for line in open(path):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name = Requirement(line).name.lower()
    if name == "torch":
        if with_torch:
            print(f"torch=={torch_ver}")  # exact build, local tag included (+cpu, +cu128)
    elif name != "onedl-mmcv":
        print(line)
PY
)
log "wheeling ${#REQS[@]} requirements${EXTRAS[*]:+ + extras: ${EXTRAS[*]}}"
"${PIP[@]}" wheel -q --prefer-binary --find-links "$PART" -w "$PART" "${REQS[@]}" "${EXTRAS[@]}"

# 4. what the notebook runs besides the packages (its tools are modules of the project's wheel)
cp "$REPO/tools/kaggle/install_offline.sh" "$PART/install_offline.sh"

# 5. manifest.json
"$PYTHON" - "$PART" "$MMCV_SOURCE" "$WITH_TORCH" "$REPO" <<'PY'
import hashlib, json, os, platform, subprocess, sys, time
from packaging.utils import parse_wheel_filename
import torch

out, mmcv_source, with_torch, repo = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
files = []
for root, _, names in os.walk(out):
    for n in sorted(names):
        p = os.path.join(root, n)
        rel = os.path.relpath(p, out)
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        entry = {"file": rel, "bytes": os.path.getsize(p), "sha256": h.hexdigest()}
        if n.endswith(".whl"):
            name, version, _, tags = parse_wheel_filename(n)
            entry.update(name=str(name), version=str(version), tags=sorted({str(t) for t in tags})[:3])
        files.append(entry)
try:
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
except OSError:
    commit, dirty = "", None
project = next(f for f in files if f.get("name") == "sartorius-cellseg-stack")
mmcv = next(f for f in files if f.get("name") == "onedl-mmcv")
manifest = {
    "format": "sartorius-wheelhouse/1",
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "python": platform.python_version(),
    "python_tag": f"cp{sys.version_info.major}{sys.version_info.minor}",
    "platform": f"{platform.system().lower()}_{platform.machine()}",
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "with_torch": with_torch,
    "project": {"name": project["name"], "version": project["version"], "git_commit": commit or None,
                "git_dirty": dirty if commit else None},
    "onedl_mmcv": {"file": mmcv["file"], "version": mmcv["version"], "built_against_torch": torch.__version__,
                   "built_against_cuda": torch.version.cuda, "source": mmcv_source},
    "files": files,
    "total_bytes": sum(f["bytes"] for f in files),
}
with open(os.path.join(out, "manifest.json.tmp"), "w") as f:
    json.dump(manifest, f, indent=2)
os.replace(os.path.join(out, "manifest.json.tmp"), os.path.join(out, "manifest.json"))
print(f"[wheelhouse] manifest: {len(files)} files, {manifest['total_bytes'] / 2**20:.1f} MB")
PY
rm -rf "$OUT" && mv "$PART" "$OUT"
log "done: $OUT (install with: bash $OUT/install_offline.sh $OUT)"
