"""Real400K / Real20M data: annotation files, item loading, transforms, tokenizer, samplers, datasets.

The public names are re-exported lazily (PEP 562): ``import real20m.datasets.annotations`` (or the
synthetic generator) must not pay for importing torch / torchvision / transformers, which alone
take ~0.9 GB of resident memory.
"""
from real20m.utils.lazy import lazy_exports

_EXPORTS = {
    "annotations": ["SOURCES", "AnnotationError", "QueryFileError", "UnsafePathError", "ClusterTable", "ItemTable",
                    "QueryGroups", "annotation_format", "load_clusters", "load_ground_truth", "load_items",
                    "load_query_groups", "parse_doc_id", "parse_query_id", "read_queries", "safe_join"],
    "collate": ["Collator", "decode_batch_pixels"],
    "dataset": ["EvalDataset", "TrainDataset", "build_eval_dataset", "build_train_dataset"],
    "items": ["ItemLoader", "ItemRoots", "segment_frame_indices", "video_frame_paths"],
    "samplers": ["ClusterBatchSampler", "SampleKey", "SourceBatchSampler"],
    "tokenization": ["build_tokenizer", "load_saved_tokenizer"],
    "transforms": ["DeviceJpegDecoder", "build_eval_transform", "build_train_transform"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
