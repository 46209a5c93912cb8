# Shared body of query2goods_evaluate.sh and query2video_evaluate.sh (sourced, POSIX sh).
# Expects ROOT, TASK, QUERY_FILE (qid<TAB>query text), GALLERY_FILE and GT_FILE; writes $OUTPUT_DIR/eval/$TASK/.
show_help_if_asked "$@"
prepare_evaluation

# The gallery as the item tasks embed it; the text queries by real20m.retrieval (one process).
# shellcheck disable=SC2086  # LEGACY_FLAG is empty or one flag
launch "$ROOT/main_cross_domain_emb.py" --evaluate --config "$CONFIG" --data_root "$DATA_ROOT" \
    --dataset_name "$DATASET_NAME" \
    --resume "$CKPT" --test_file "$GALLERY_FILE" --output_dir "$EVAL_DIR/gallery" $LEGACY_FLAG "$@"
# shellcheck disable=SC2086
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m real20m.retrieval --embed_queries "$QUERY_FILE" \
    --checkpoint "$CKPT" --out "$EVAL_DIR/query" \
    --config "$CONFIG" --data_root "$DATA_ROOT" --dataset_name "$DATASET_NAME" $LEGACY_FLAG "$@"

set -- --query_features "$EVAL_DIR/query" --gallery_features "$EVAL_DIR/gallery" --gt_file "$GT_FILE" \
    --output_dir "$EVAL_DIR" --task "$TASK" --report --query_texts "$QUERY_FILE" \
    --gallery_file "$GALLERY_FILE" --goods_img_root "$DATA_ROOT/$DATASET_NAME/goods/images" \
    --photo_img_root "$DATA_ROOT/$DATASET_NAME/video/images"
[ -n "${INDEX:-}" ] && set -- "$@" --index "$INDEX"
[ -n "${NPROBE:-}" ] && set -- "$@" --nprobe "$NPROBE"
[ -n "${SHARDS:-}" ] && set -- "$@" --shards "$SHARDS"
[ -n "${USE_GPU:-}" ] && set -- "$@" --use_gpu "$USE_GPU"
[ -n "${SEARCH_BACKEND:-}" ] && set -- "$@" --search_backend "$SEARCH_BACKEND"
"$PYTHON" "$ROOT/evaluation.py" "$@"
