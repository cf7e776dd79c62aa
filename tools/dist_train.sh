#!/usr/bin/env bash
# Distributed training with torchrun (python -m torch.distributed.run):
#   tools/dist_train.sh CONFIG GPUS [train.py options]
# On a CPU-only machine GPUS is the number of processes (gloo).
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

source "$(dirname "$0")/python_env.sh"

# exec: the script becomes the launcher, so that killing it kills the launcher, whose workers
# then die with it (tools/train.py and tools/test.py ask the kernel for that under torchrun).
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
