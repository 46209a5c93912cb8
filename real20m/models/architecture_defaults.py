"""What a stored architecture (a checkpoint's ``model_cfg``) means by a key it lacks: checkpoints
written before an option existed read as the model was built then. The configuration's model
defaults are these same values, so a run's architecture and an old checkpoint's agree."""

ARCHITECTURE_DEFAULTS = {
    "frame_aggregation": "transformer",
    "fusion": "attention",
    "frame_init": "default",
    "frame_heads": 8,
    "clip_length": 5,
    "gradient_checkpointing": False,
    "use_title_mask": True,
    "use_query_mask": True,
    "frame_fp16": False,
    "category_classes": 0,   # no category classification head
}


def with_defaults(model_cfg: dict) -> dict:
    """``model_cfg`` with every key it lacks at its default."""
    return {**ARCHITECTURE_DEFAULTS, **model_cfg}
