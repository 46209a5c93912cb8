"""QCD model: text/vision towers, frame transformer, attention pooling, caption decoder,
and loading of the checkpoints released with the paper."""
from .convert import (
    WeightMismatchError,
    build_model_from_release_config,
    is_release_checkpoint,
    load_converted,
    load_release_model,
    load_weights_into,
    save_converted,
)
from .qcd import ItemEmbeddings, QCDModel, build_model, tiny_model_config
from .release_layout import ReleaseLayoutError

__all__ = [
    "ItemEmbeddings", "QCDModel", "build_model", "tiny_model_config",
    "WeightMismatchError", "ReleaseLayoutError", "build_model_from_release_config",
    "is_release_checkpoint", "load_converted", "load_release_model", "load_weights_into",
    "save_converted",
]
