"""An exported model (``model.safetensors`` + ``config.json``) read back the way the package reads
one: the source inspected once, the model built from its architecture, its weights loaded strictly."""
from real20m.model_source import inspect_source, load_weights
from real20m.models import build_model


def load_exported(folder):
    exported = inspect_source(str(folder))
    model = build_model(exported.model_cfg)
    load_weights(model, exported.state(), exported.path)
    return model.eval()
