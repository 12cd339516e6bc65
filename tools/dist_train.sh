#!/usr/bin/env bash
# Distributed (DDP) training over torchrun: bash tools/dist_train.sh CONFIG NPROC [tools/train.py options]
# (environment: see tools/dist_launch.sh)
set -euo pipefail
exec bash "$(dirname "$0")/dist_launch.sh" train "$2" "$1" "${@:3}"
