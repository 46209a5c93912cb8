#!/bin/sh
# Evaluate video->goods retrieval: embed the query items and the gallery, search, print Recall@K.
#   sh video2goods_evaluate.sh                 the newest checkpoint of $OUTPUT_DIR on the synthetic test split
#   CKPT=init sh video2goods_evaluate.sh       the untrained model, as a baseline
# Environment: DATA_ROOT OUTPUT_DIR CKPT QUERY_FILE GALLERY_FILE GT_FILE INDEX (a Faiss factory string)
# NPROBE SHARDS LEGACY_FEATURES=1 CONFIG PYTHON and the torchrun variables of train.sh. Extra arguments go to
# main_cross_domain_emb.py --evaluate. Results: $OUTPUT_DIR/eval/video2goods/.
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
. "$ROOT/scripts/common.sh"
TASK=video2goods
QUERY_FILE=${QUERY_FILE:-$DATA_ROOT/test_file/video_queries.txt}
GALLERY_FILE=${GALLERY_FILE:-$DATA_ROOT/test_file/goods_gallery.txt}
GT_FILE=${GT_FILE:-$DATA_ROOT/test_file/eval_gt_video2goods.txt}
. "$ROOT/scripts/evaluate_task.sh"
