# Shared body of video2goods_evaluate.sh and goods2video_evaluate.sh (sourced, POSIX sh).
# Expects ROOT, TASK, QUERY_FILE, GALLERY_FILE, GT_FILE; writes $OUTPUT_DIR/eval/$TASK/.
show_help_if_asked "$@"
prepare_evaluation

embed() {  # embed <items file> <feature folder> [extra flags]
    items=$1; folder=$2; shift 2
    # shellcheck disable=SC2086  # LEGACY_FLAG is empty or one flag
    launch "$ROOT/main_cross_domain_emb.py" --evaluate --config "$CONFIG" --data_root "$DATA_ROOT" \
        --dataset_name "$DATASET_NAME" \
        --resume "$CKPT" --test_file "$items" --output_dir "$folder" $LEGACY_FLAG "$@"
}
embed "$QUERY_FILE" "$EVAL_DIR/query" "$@"
embed "$GALLERY_FILE" "$EVAL_DIR/gallery" "$@"

set -- --query_features "$EVAL_DIR/query" --gallery_features "$EVAL_DIR/gallery" --gt_file "$GT_FILE" \
    --output_dir "$EVAL_DIR" --task "$TASK" --report --query_file "$QUERY_FILE" \
    --gallery_file "$GALLERY_FILE" --goods_img_root "$DATA_ROOT/$DATASET_NAME/goods/images" \
    --photo_img_root "$DATA_ROOT/$DATASET_NAME/video/images"
[ -n "${INDEX:-}" ] && set -- "$@" --index "$INDEX"
[ -n "${NPROBE:-}" ] && set -- "$@" --nprobe "$NPROBE"
[ -n "${SHARDS:-}" ] && set -- "$@" --shards "$SHARDS"
[ -n "${USE_GPU:-}" ] && set -- "$@" --use_gpu "$USE_GPU"
[ -n "${SEARCH_BACKEND:-}" ] && set -- "$@" --search_backend "$SEARCH_BACKEND"
"$PYTHON" "$ROOT/evaluation.py" "$@"
