#!/usr/bin/env bash
# Distributed evaluation over torchrun: bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [tools/test.py options]
# (environment: see tools/dist_launch.sh)
set -euo pipefail
exec bash "$(dirname "$0")/dist_launch.sh" test "$3" "$1" "$2" "${@:4}"
