#!/usr/bin/env bash
# One node, all its GPUs: TP x PP x DP = GPUS. Extra arguments are dotted config overrides.
#   examples/launch/torchrun_single_node.sh examples/qwen3/qwen3_8b_to_4b_lsp0.5.yaml train.train_steps=100
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG.yaml [key=value ...]}; shift
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
export CUDA_DEVICE_MAX_CONNECTIONS=1   # megatron-core's TP/SP comm-compute overlap relies on it
exec torchrun --standalone --nproc-per-node "${GPUS}" -m megatron_truncdistill.train --config "${CONFIG}" "$@"
