# Shared by train.sh and the two evaluation scripts (sourced, POSIX sh). Expects ROOT to be set.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
DATA_ROOT=${DATA_ROOT:-./Dataset}
OUTPUT_DIR=${OUTPUT_DIR:-./outputs}
DATASET_NAME=${DATASET_NAME:-Real400K}
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
# The same tiny synthetic configuration with or without GPUs; the paper's only when asked for.
CONFIG=${CONFIG:-$ROOT/configs/tiny.yaml}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_GIVEN=${NPROC_PER_NODE:+yes}
if [ "$GPUS" -gt 0 ]; then NPROC_PER_NODE=${NPROC_PER_NODE:-$GPUS}; else NPROC_PER_NODE=${NPROC_PER_NODE:-1}; fi
# How often torchrun restarts every rank after one fails; a script that resumes sets RESTARTS (train.sh).
if [ "$GPUS" -gt 0 ]; then MAX_RESTARTS=${MAX_RESTARTS:-3}; else MAX_RESTARTS=${MAX_RESTARTS:-0}; fi
RESTARTS=0

# --help / -h among the arguments: print the entry point's help and stop, before anything is written.
show_help_if_asked() {
    for argument in "$@"; do
        case "$argument" in
            -h|--help)
                sed -n '2,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
                echo
                "$PYTHON" "$ROOT/main_cross_domain_emb.py" --help
                exit 0 ;;
        esac
    done
}

# An input the script was given (its variable, its path, what to do) must exist: one line, exit 2.
require_input() {
    if [ ! -e "$2" ]; then
        echo "error: $2: no such file or folder ($1); $3" >&2
        exit 2
    fi
}

# For the evaluation scripts (TASK set): the inputs checked, CKPT (default: the run's newest
# checkpoint, or init), EVAL_DIR and LEGACY_FLAG.
prepare_evaluation() {
    require_input DATA_ROOT "$DATA_ROOT" "set DATA_ROOT to a dataset in the Real400K layout (sh train.sh writes the synthetic one there)"
    for variable in QUERY_FILE GALLERY_FILE GT_FILE; do
        eval "path=\$$variable"
        require_input "$variable" "$path" "set $variable, or DATA_ROOT to a dataset that has it"
    done
    CKPT=${CKPT:-$OUTPUT_DIR/checkpoints/last.pth.tar}
    if [ "$CKPT" != init ] && [ ! -f "$CKPT" ]; then
        echo "error: no checkpoint at $CKPT: train first (sh train.sh), set CKPT=path, or CKPT=init for the untrained baseline" >&2
        exit 2
    fi
    EVAL_DIR="$OUTPUT_DIR/eval/$TASK"
    LEGACY_FLAG=""
    if [ "${LEGACY_FEATURES:-0}" = 1 ]; then LEGACY_FLAG="--legacy_text_features"; fi
}

# A missing data folder gets the synthetic dataset; an existing one is never written to.
ensure_dataset() {
    if [ ! -e "$DATA_ROOT" ]; then
        echo "no dataset at $DATA_ROOT: generating the synthetic one"
        "$PYTHON" -m real20m.datasets.synthetic --out "$DATA_ROOT" --seed 0
    fi
}

# Training on one node with one process per GPU found (NPROC_PER_NODE not set): no more processes
# than the training data (arguments: the training flags) gives a batch each, so the tiny config on
# the synthetic dataset runs on a node of 8 GPUs instead of stopping with "too few samples".
cap_processes_to_data() {
    if [ "$NNODES" -eq 1 ] && [ -z "$NPROC_GIVEN" ] && [ "$NPROC_PER_NODE" -gt 1 ]; then
        NPROC_PER_NODE=$("$PYTHON" -m real20m.cli.processes "$NPROC_PER_NODE" "$@")
    fi
}

# One process without torchrun when there is nothing to distribute or restart; one node: torchrun
# --standalone (a free port, so a second run on the node does not collide); several nodes: the
# c10d rendezvous at RDZV_ENDPOINT (every node's agent restarts its ranks together after a
# failure), else the static one at MASTER_ADDR:MASTER_PORT. RESTARTS: torchrun's --max-restarts.
launch() {
    if [ "$NNODES" -eq 1 ] && [ "$NPROC_PER_NODE" -eq 1 ] && [ "$RESTARTS" -eq 0 ]; then
        "$PYTHON" "$@"
    elif [ "$NNODES" -eq 1 ]; then
        "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC_PER_NODE" \
            --max-restarts "$RESTARTS" "$@"
    elif [ -n "${RDZV_ENDPOINT:-}" ]; then
        "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --rdzv_backend c10d \
            --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-real20m}" \
            --nproc_per_node "$NPROC_PER_NODE" --max-restarts "$RESTARTS" "$@"
    else
        "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" \
            --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
            --nproc_per_node "$NPROC_PER_NODE" --max-restarts "$RESTARTS" "$@"
    fi
}
