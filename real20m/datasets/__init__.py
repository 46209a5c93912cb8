"""Real400K / Real20M data: annotation files, item loading, transforms, tokenizer, samplers, datasets.

The public names are re-exported lazily (PEP 562): ``import real20m.datasets.annotations`` (or the
synthetic generator) must not pay for importing torch / torchvision / transformers, which alone
take ~0.9 GB of resident memory.
"""
import importlib

_EXPORTS = {
    "annotations": ["SOURCES", "AnnotationError", "UnsafePathError", "ClusterTable", "ItemTable", "QueryGroups",
                    "detect_format", "load_clusters", "load_ground_truth", "load_items", "load_query_groups",
                    "parse_doc_id", "parse_query_id", "safe_join"],
    "collate": ["Collator"],
    "dataset": ["EvalDataset", "TrainDataset", "build_eval_dataset", "build_train_dataset"],
    "items": ["ItemLoader", "ItemRoots", "segment_frame_indices", "video_frame_paths"],
    "samplers": ["ClusterBatchSampler", "SampleKey", "SourceBatchSampler", "build_batch_sampler"],
    "tokenization": ["build_tokenizer", "load_saved_tokenizer"],
    "transforms": ["build_eval_transform", "build_train_transform"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
