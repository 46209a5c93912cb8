"""Load weights into a QCDModel from a release checkpoint or our own format; convert; verify.

Entry points:
    load_weights_into(model, checkpoint_dict)   release layout or {"model": state_dict}, strict
    build_model_from_release_config(cfg)        QCDModel for a cn_clip-style config (None = paper)
    save_converted(model, dir)                  model.safetensors + config.json
    convert_checkpoint(src, dir)                any supported checkpoint -> our format

    python -m real20m.models.convert --check FIXTURE_DIR [--out OUT.npz]
        embeds the fixture's reference inputs with the fixture checkpoint and compares every
        reference output; prints one JSON line {array: max abs diff}; exit 0 only if all <= tol.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from real20m.utils.checkpoint_io import load_checkpoint
from real20m.utils.entry import exit_on_input_error

from .momentum import MOMENTUM_STATE_PREFIX
from .qcd import QCDModel, build_model
from .release_layout import (
    ReleaseLayoutError,
    WeightMismatchError,
    is_release_checkpoint,
    map_release_checkpoint,
    model_config_from_release,
    strip_ddp_prefix,
)

logger = logging.getLogger(__name__)

CONVERTED_WEIGHTS = "model.safetensors"
CONVERTED_CONFIG = "config.json"
DEFAULT_TOLERANCE = 1e-4
# The release stores no caption decoder in a layout we read: a model that has one keeps its init.
RELEASE_UNMAPPED_PREFIXES = ("caption.",)

__all__ = [
    "WeightMismatchError", "ReleaseLayoutError", "is_release_checkpoint",
    "load_weights_into", "build_model_from_release_config",
    "save_converted", "convert_checkpoint", "embed_reference_inputs", "check_fixture",
]


def check_state_dict(model: torch.nn.Module, state: dict, sources: dict | None = None,
                     allowed_missing: tuple[str, ...] = ()) -> None:
    """Raise WeightMismatchError: the first differing tensor with both shapes, then how many keys
    are missing / unexpected / wrongly shaped (a few of each named)."""
    sources = sources or {}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(allowed_missing)]
    unexpected = sorted(f"{sources[k]} (as {k})" if k in sources else k for k in state if k not in expected)
    shapes = [
        f"{sources.get(k, k)} -> {k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = [f"{len(keys)} {kind}: {_first_few(keys)}" for kind, keys in (
        ("missing keys", sorted(missing)), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        first = _first_difference(expected, state, allowed_missing)
        raise WeightMismatchError(f"checkpoint does not fit the model: first difference {first}; "
                                  + "; ".join(problems))


def _first_few(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{keys[:shown]}{more}"


def _first_difference(expected: dict, state: dict, allowed_missing: tuple[str, ...]) -> str:
    """The first model tensor (in the model's order) the checkpoint lacks or shapes differently."""
    for key, tensor in expected.items():
        if key.startswith(allowed_missing) and key not in state:
            continue
        model_shape = tuple(tensor.shape)
        if key not in state:
            return f"{key}: model {model_shape}, not in the checkpoint"
        if tuple(state[key].shape) != model_shape:
            return f"{key}: checkpoint {tuple(state[key].shape)} vs model {model_shape}"
    extra = next(key for key in state if key not in expected)
    return f"{extra}: checkpoint {tuple(state[extra].shape)}, not in the model"


def _strip_ddp_prefixes(state: dict) -> dict:
    return {strip_ddp_prefix(key): value for key, value in state.items()}


def load_weights_into(model: QCDModel, checkpoint: dict) -> str:
    """Load a release checkpoint or our {"model": state_dict} into `model`; return the summary.

    Strict: every checkpoint tensor must land in the model (or be on the release ignore list)
    and every model tensor must be filled (except a caption decoder, absent from releases).
    """
    if is_release_checkpoint(checkpoint):
        state, report = map_release_checkpoint(checkpoint)
        allowed = RELEASE_UNMAPPED_PREFIXES if model.caption is not None else ()
        check_state_dict(model, state, report.sources, allowed_missing=allowed)
        model.load_state_dict(state, strict=False)
        summary = report.summary()
        if allowed:
            summary += "; the caption decoder keeps its initialisation"
        if model.use_title_mask:
            summary += "; note: use_title_mask=True differs from the original (unmasked titles)"
    elif isinstance(checkpoint.get("model"), dict):
        state = _strip_ddp_prefixes(checkpoint["model"])
        check_state_dict(model, state)
        model.load_state_dict(state, strict=True)
        summary = f"loaded {len(state)} tensors (QCDModel format)"
    else:
        raise WeightMismatchError(
            "checkpoint is neither a Real20M release (state_dict, doc_text_model, doc_fusion_model) "
            f"nor a QCDModel checkpoint (model); top-level keys: {sorted(checkpoint)}")
    logger.info(summary)
    return summary


def build_model_from_release_config(cfg_json: dict | None = None) -> QCDModel:
    """QCDModel for a cn_clip-style configuration (None: the paper's), in original-compat mode."""
    return build_model(model_config_from_release(cfg_json))


# ----------------------------------------------------------------------------- our format
def save_converted(model: QCDModel, out_dir) -> None:
    """Write model.safetensors + config.json (a model_cfg that rebuilds the model offline)."""
    os.makedirs(out_dir, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (e.g. tied decoder embeddings)
    # A momentum encoder (momentum.py) serves training alone: the export embeds without it.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if not k.startswith(MOMENTUM_STATE_PREFIX)}
    save_file(state, os.path.join(out_dir, CONVERTED_WEIGHTS))
    config = {k: v for k, v in model.resolved_config().items() if k != "momentum"}
    with open(os.path.join(out_dir, CONVERTED_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)


def convert_checkpoint(src, dst_dir, release_cfg: dict | None = None, model_cfg: dict | None = None,
                       pad_token_id: int = 0) -> QCDModel:
    """Any supported checkpoint file -> `dst_dir` in our format; returns the loaded model.

    A release checkpoint is built from `release_cfg` (None: the paper's configuration). Our own
    checkpoints carry `model_cfg` (or pass one); the vocabulary size is read off the weights.
    """
    checkpoint = load_checkpoint(src)
    if is_release_checkpoint(checkpoint):
        model = build_model_from_release_config(release_cfg)
    else:
        model_cfg = model_cfg or checkpoint.get("model_cfg")
        if not isinstance(checkpoint.get("model"), dict) or not model_cfg:
            raise WeightMismatchError(
                f"{src}: not a release checkpoint, and not a QCDModel checkpoint with a model config "
                f"(entries 'model' + 'model_cfg', or pass the model config); top-level keys: {sorted(checkpoint)}")
        embeddings = _strip_ddp_prefixes(checkpoint["model"]).get("text.encoder.embeddings.word_embeddings.weight")
        vocab_size = None if embeddings is None else int(embeddings.shape[0])
        model = build_model(model_cfg, vocab_size=vocab_size, pad_token_id=pad_token_id)
    load_weights_into(model, checkpoint)
    save_converted(model, dst_dir)
    return model


# ----------------------------------------------------------------------- reference check
def _pixels_per_item(pixels: np.ndarray, frames_per_item: int) -> torch.Tensor:
    images = torch.from_numpy(pixels)
    return images.view(images.shape[0] // frames_per_item, frames_per_item, *images.shape[1:])


@torch.no_grad()
def embed_reference_inputs(model: QCDModel, reference: dict, clip_length: int) -> dict[str, np.ndarray]:
    """Embed the fixture inputs as the original evaluation does (titles without a mask)."""
    model.eval()
    outputs = {}
    for kind, frames_per_item in (("video", clip_length), ("goods", 1)):
        title_ids = torch.from_numpy(reference[f"{kind}_title_ids"])
        pixels = _pixels_per_item(reference[f"{kind}_pixels"], frames_per_item)
        items = model.encode_items(title_ids, None, pixels)
        outputs[f"{kind}_title_emb"] = model.text_features(title_ids, None)
        outputs[f"{kind}_frame_emb"] = model.frame_features(pixels.flatten(0, 1))
        outputs[f"{kind}_t_emb"] = items.title
        outputs[f"{kind}_v_emb"] = items.visual
        outputs[f"{kind}_doc_emb"] = F.normalize(items.fused, dim=-1)
        outputs[f"{kind}_pool_weights"] = items.pool_weights
    if "extra_padded_title_ids" in reference:
        outputs["extra_padded_title_emb"] = model.text_features(
            torch.from_numpy(reference["extra_padded_title_ids"]), None)
    return {name: value.numpy() for name, value in outputs.items()}


def check_fixture(fixture_dir, checkpoint_name: str = "checkpoint.pth.tar", out_path=None) -> dict[str, float]:
    """Max abs difference per reference output array (a missing output counts as inf)."""
    fixture = Path(fixture_dir)
    with open(fixture / "config.json", encoding="utf-8") as f:
        release_cfg = json.load(f)
    model = build_model_from_release_config(release_cfg)
    load_weights_into(model, load_checkpoint(fixture / checkpoint_name))
    with np.load(fixture / "reference_io.npz") as npz:
        reference = {name: npz[name] for name in npz.files}
    produced = embed_reference_inputs(model, reference, model.frame.clip_length)
    if out_path is not None:
        np.savez(out_path, **produced)
    expected_names = [n for n in reference if not n.endswith("_ids") and not n.endswith("_pixels")]
    return {
        name: float(np.abs(produced[name] - reference[name]).max()) if name in produced else float("inf")
        for name in expected_names
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="FIXTURE_DIR", required=True,
                        help="folder with checkpoint.pth.tar, config.json and reference_io.npz")
    parser.add_argument("--checkpoint", default="checkpoint.pth.tar", help="checkpoint file name inside FIXTURE_DIR")
    parser.add_argument("--out", metavar="OUT.npz", help="write the computed arrays here")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    diffs = exit_on_input_error(lambda: check_fixture(args.check, args.checkpoint, args.out))
    print(json.dumps(diffs))
    failed = {name: diff for name, diff in diffs.items() if not diff <= args.tolerance}
    if failed:
        print(f"FAILED: max abs difference above {args.tolerance}: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
