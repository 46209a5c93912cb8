#!/bin/sh
# Evaluate text query->video retrieval: embed the test queries and the video gallery, search, print Recall@K.
#   sh query2video_evaluate.sh                 the newest checkpoint of $OUTPUT_DIR on the synthetic test split
#   CKPT=init sh query2video_evaluate.sh       the untrained model, as a baseline
# Environment: DATA_ROOT OUTPUT_DIR CKPT (a checkpoint file, or init) QUERY_FILE
# (qid<TAB>query text) GALLERY_FILE GT_FILE INDEX (a Faiss factory string) NPROBE SHARDS
# LEGACY_FEATURES=1 CONFIG PYTHON and the torchrun variables of train.sh. Extra arguments go to
# main_cross_domain_emb.py --evaluate and to python -m real20m.retrieval. Results: $OUTPUT_DIR/eval/query2video/.
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
. "$ROOT/scripts/common.sh"
TASK=query2video
QUERY_FILE=${QUERY_FILE:-$DATA_ROOT/test_file/queries.txt}
GALLERY_FILE=${GALLERY_FILE:-$DATA_ROOT/test_file/video_queries.txt}
GT_FILE=${GT_FILE:-$DATA_ROOT/test_file/eval_gt_query2video.txt}
. "$ROOT/scripts/evaluate_queries.sh"
