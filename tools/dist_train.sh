#!/usr/bin/env bash
# Distributed training through torchrun (torch.distributed.run) and mmengine's launcher.
#   bash tools/dist_train.sh CONFIG NPROC [train.py options]
# NPROC processes on this machine: one per GPU; without CUDA, CPU processes (Gloo backend).
# Several machines: run it on each with the same MASTER_ADDR (the rank-0 machine), e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8   # machine 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8   # machine 1
# Python: $PYTHON if set, else the repository's .venv (make venv), else python3 on PATH.
set -euo pipefail
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$REPO/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
