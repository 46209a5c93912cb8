#!/bin/sh
# Evaluate text query->goods retrieval: embed the test queries and the goods gallery, search, print Recall@K.
#   sh query2goods_evaluate.sh                 the newest checkpoint of $OUTPUT_DIR on the synthetic test split
#   CKPT=init sh query2goods_evaluate.sh       the untrained model, as a baseline
# Environment: DATA_ROOT OUTPUT_DIR CKPT (a checkpoint file, or init) QUERY_FILE
# (qid<TAB>query text) GALLERY_FILE GT_FILE INDEX (a Faiss factory string) NPROBE SHARDS
# LEGACY_FEATURES=1 CONFIG PYTHON and the torchrun variables of train.sh. Extra arguments go to
# main_cross_domain_emb.py --evaluate and to python -m real20m.retrieval. Results: $OUTPUT_DIR/eval/query2goods/.
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
. "$ROOT/scripts/common.sh"
TASK=query2goods
QUERY_FILE=${QUERY_FILE:-$DATA_ROOT/test_file/queries.txt}
GALLERY_FILE=${GALLERY_FILE:-$DATA_ROOT/test_file/goods_gallery.txt}
GT_FILE=${GT_FILE:-$DATA_ROOT/test_file/eval_gt_query2goods.txt}
. "$ROOT/scripts/evaluate_queries.sh"
