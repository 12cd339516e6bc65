#!/usr/bin/env bash
# The one torchrun body behind tools/dist_train.sh and tools/dist_test.sh:
#   bash tools/dist_launch.sh TOOL NPROC [TOOL arguments]
# TOOL: train or test (train.py / test.py accepted), run as the module workflow.cli.TOOL in every process.
# nccl on GPUs, gloo on CPU-only machines (chosen by the tool). Multi-node: set NNODES, NODE_RANK, MASTER_ADDR,
# PORT. PYTHON defaults to the project venv when present. The recipe runs the same launch line
# (python -m torch.distributed.run ... -m workflow.cli.train ... --launcher pytorch).
set -euo pipefail
TOOL=${1%.py}
NPROC=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ ! "$TOOL" =~ ^[a-z_]+$ || ! -f "$ROOT/workflow/cli/$TOOL.py" ]]; then
    echo "dist_launch.sh: no tool workflow.cli.$TOOL (expected train or test)" >&2
    exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" --master_port="${PORT:-29500}" \
    -m "workflow.cli.$TOOL" "${@:3}" --launcher pytorch
