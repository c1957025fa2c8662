#!/usr/bin/env bash
# Run on every node with the same MASTER_ADDR/MASTER_PORT and NNODES; NODE_RANK differs per node.
#   MASTER_ADDR=node0 NNODES=4 NODE_RANK=$i examples/launch/torchrun_multi_node.sh CONFIG.yaml [key=value ...]
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG.yaml [key=value ...]}; shift
: "${MASTER_ADDR:?set MASTER_ADDR}" "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}"
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
export CUDA_DEVICE_MAX_CONNECTIONS=1
exec torchrun --nnodes "${NNODES}" --node-rank "${NODE_RANK}" --nproc-per-node "${GPUS_PER_NODE}" \
  --rdzv-backend c10d --rdzv-endpoint "${MASTER_ADDR}:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-truncdistill}" \
  -m megatron_truncdistill.train --config "${CONFIG}" "$@"
