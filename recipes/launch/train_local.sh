#!/bin/bash
# Single-node training: one process on CPU / one GPU, or torchrun over all local GPUs.
#
#   recipes/launch/train_local.sh recipes/configs/tiny-text.yaml                 # 1 process
#   NPROC=8 recipes/launch/train_local.sh recipes/configs/base-7b.yaml           # 8 GPUs (FSDP per the recipe)
#   NPROC=2 recipes/launch/train_local.sh recipes/configs/tiny-interleaved.yaml --train.parallel ddp
set -euo pipefail
CONFIG=${1:?usage: recipes/launch/train_local.sh CONFIG.yaml [overrides...]}
shift
NPROC=${NPROC:-1}
if [ "${NPROC}" -eq 1 ]; then
    exec spiritlm train --config "${CONFIG}" "$@"
fi
exec torchrun --standalone --nproc_per_node "${NPROC}" -m spiritlm.cli train --config "${CONFIG}" "$@"
