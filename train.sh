#!/bin/sh
# Train the QCD model.
#   sh train.sh                      makes the synthetic dataset if missing, trains configs/tiny.yaml (CPU or GPUs;
#                                    one process per GPU, fewer when the data fills fewer batches)
#   CONFIG=configs/paper.yaml NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 NPROC_PER_NODE=8 sh train.sh   the paper set-up
# Environment: DATA_ROOT (./Dataset) OUTPUT_DIR (./outputs) CONFIG EPOCHS PYTHON, and the torchrun
# variables NNODES NODE_RANK MASTER_ADDR MASTER_PORT NPROC_PER_NODE, RDZV_ENDPOINT RDZV_ID (several
# nodes, c10d rendezvous) and MAX_RESTARTS (3 with GPUs, else 0): after a rank fails, torchrun
# restarts every rank that often, each continuing from the newest checkpoint in OUTPUT_DIR (the
# run starts with --resume latest: a fresh start when there is none). Extra arguments go to
# main_cross_domain_emb.py (original flag names, e.g. --batch_size 64 --is_xbm; --resume PATH wins).
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
. "$ROOT/scripts/common.sh"
show_help_if_asked "$@"

ensure_dataset
# The training flags, once for the process-count check and once for the run; the user's come last and win.
if [ -n "${EPOCHS:-}" ]; then set -- --epochs "$EPOCHS" "$@"; fi
set -- --config "$CONFIG" --data_root "$DATA_ROOT" --dataset_name "$DATASET_NAME" --output_dir "$OUTPUT_DIR" "$@"
cap_processes_to_data "$@"
RESTARTS=$MAX_RESTARTS
launch "$ROOT/main_cross_domain_emb.py" --resume latest "$@"
