"""QCD model: text/vision towers, frame transformer, attention pooling, caption decoder,
and loading of the checkpoints released with the paper.

Names are re-exported lazily (PEP 562) so that ``python -m real20m.models.convert`` does not
import its own module twice.
"""
from real20m.utils.lazy import lazy_exports

_EXPORTS = {
    "convert": ["WeightMismatchError", "build_model_from_release_config", "is_release_checkpoint",
                "load_weights_into", "save_converted"],
    "qcd": ["ItemEmbeddings", "QCDModel", "build_model"],
    "release_layout": ["ReleaseLayoutError"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
