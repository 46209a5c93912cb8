"""``resolve``: check the merged inputs and derive every dependent value, once, into a frozen
``Config``. It reads no file: what it needs from the file system comes in as ``FileFacts``."""
from __future__ import annotations

import copy
from typing import Mapping

from real20m.config.file_layout import FileFacts, category_file_of, checkpoint_folder, fill_data_paths
from real20m.config.schema import (COMPAT_MODES, LATEST, SECTIONS, Config, ConfigError, DataConfig, LossConfig,
                                   ModelConfig, OptimConfig, RunConfig)
from real20m.models.backbones import get_backbone
from real20m.models.component_registry import FRAME_AGGREGATIONS, FUSIONS
from real20m.models.lr_groups import QCD_LR_GROUPS, default_multipliers

# Token lengths when not set: ours, and the original release's (queries 20 tokens, titles 90).
DEFAULT_TEXT_LENGTHS = {"max_query_len": 32, "max_title_len": 64}
ORIGINAL_TEXT_LENGTHS = {"max_query_len": 20, "max_title_len": 90}


def resolve(values: dict, facts: FileFacts) -> Config:
    """Check the merged inputs and derive every dependent value; returns the frozen Config."""
    inputs = copy.deepcopy(values)
    values = copy.deepcopy(values)
    data, model, loss, optim, run = (values[name] for name in SECTIONS)
    _resolve_run(run, facts)
    _resolve_data(data, loss, facts)
    _check_lr_mult(optim["lr_mult"])
    get_backbone(model["backbone"])   # an unknown name is one line listing the registered ones
    FRAME_AGGREGATIONS.check(model["frame_aggregation"])
    FUSIONS.check(model["fusion"])
    if not isinstance(optim["accum_freq"], int) or optim["accum_freq"] < 1:
        raise ConfigError(f"optim.accum_freq must be a positive integer, got {optim['accum_freq']!r}")
    weights = _resolve_weights(loss, model)
    _resolve_categories(data, weights, facts)
    # One loader batch is one optimizer step: accum_freq micro-batches of batch_size (accumulation.py).
    data["step_batch_size"] = data["batch_size"] * optim["accum_freq"]
    if loss["xbm_size"] is None:
        # The original's bank holds 10 of its steps' batches (N x B samples with accumulation).
        loss["xbm_size"] = 10 * data["step_batch_size"] if loss["xbm_mode"] == "original" else 4096
    return Config(
        seed=int(values["seed"]),
        data=DataConfig(**data),
        model=ModelConfig(**{**model, **_derived_model(data, model, weights, loss["log_terms"])}),
        loss=LossConfig(**{**loss, "weights": weights}),
        optim=OptimConfig(**{**optim, "lr_mult": {**default_lr_mult(), **optim["lr_mult"]}}),
        run=RunConfig(**run),
        inputs=inputs,
    )


def _derived_model(data: dict, model: dict, weights: Mapping[str, float], log_terms: tuple[str, ...]) -> dict:
    """The model's values that follow from the data section and the loss terms computed (weighted
    or logged)."""
    terms = tuple(dict.fromkeys((*(name for name, weight in weights.items() if weight), *log_terms)))
    if not 0.0 <= model["momentum"] <= 1.0:
        raise ConfigError(f"model.momentum must be in [0, 1], got {model['momentum']!r}")
    masked = data["compat"] != "original"
    return {
        "clip_length": data["clip_length"],
        "image_size": data["image_size"],
        "use_title_mask": masked,
        "use_query_mask": masked,
        "frame_fp16": (not masked) if model["frame_fp16"] is None else model["frame_fp16"],
        "pixel_stats": model["pixel_stats"] or ("backbone" if masked else "imagenet"),
        # A decoder whose loss has weight 0 never gets a gradient (DDP refuses such parameters).
        "caption": model["caption"] if weights.get("caption", 0) else None,
        # The classification head exists only for its term, so other runs initialise as before.
        "category_classes": len(data["category_names"]) if weights.get("category", 0) else 0,
        "momentum_encoder": _reads_momentum(terms),
    }


def _reads_momentum(terms: tuple[str, ...]) -> bool:
    """Whether one of ``terms`` reads momentum-encoder outputs (its copy of the model costs memory
    and time: built only then)."""
    from real20m.losses.terms import TERMS
    return any(TERMS[name].reads_momentum for name in terms)


def _resolve_categories(data: dict, weights: Mapping[str, float], facts: FileFacts) -> None:
    """Batches carry goods-category labels only when a weighted term reads them (otherwise the
    data, the sampler and the RNG are as without the feature); their vocabulary and file."""
    data["category_labels"] = reads_categories(weights)
    data["category_names"] = tuple(facts.category_names) if data["category_labels"] else ()
    if data["category_labels"] and data["cluster_file"] is None:
        data["cluster_file"] = category_file_of(data)


def reads_categories(weights: Mapping[str, float]) -> bool:
    """Whether a term with a nonzero weight reads the training samples' categories."""
    from real20m.datasets.categories import CATEGORY_KEY
    from real20m.losses.terms import TERMS
    return any(weight and CATEGORY_KEY in TERMS[name].reads for name, weight in weights.items())


def category_labels_wanted(values: dict) -> bool:
    """``reads_categories`` of the weights that the merged inputs ``values`` resolve to (for the
    file probe, which runs before resolving)."""
    return reads_categories(_resolve_weights(copy.deepcopy(values["loss"]), values["model"]))


def _resolve_run(run: dict, facts: FileFacts) -> None:
    run["checkpoints"] = checkpoint_folder(run)
    if run["resume"] == LATEST:
        run["resume"] = facts.latest_checkpoint


def _resolve_data(data: dict, loss: dict, facts: FileFacts) -> None:
    """Paths under data_root, compat (a checkpoint's layer may have set it), text lengths, item pairs."""
    fill_data_paths(data, facts.cluster_file_present)
    if data["compat"] is None:
        data["compat"] = "default"
    if data["compat"] not in COMPAT_MODES:
        raise ConfigError(f"data.compat must be one of {COMPAT_MODES}, got {data['compat']!r}")
    lengths = ORIGINAL_TEXT_LENGTHS if data["compat"] == "original" else DEFAULT_TEXT_LENGTHS
    for name, length in lengths.items():
        if data[name] is None:
            data[name] = length
    for name in ("clip_length", "image_size", "batch_size", "max_query_len", "max_title_len"):
        if not isinstance(data[name], int) or data[name] < 1:
            raise ConfigError(f"data.{name} must be a positive integer, got {data[name]!r}")
    data["item_pairs"] = not loss["query_guidance"]


def _resolve_weights(loss: dict, model: dict) -> dict[str, float]:
    """Every term's weight: the defaults, the inputs, and what the other options imply."""
    loss["log_terms"] = tuple(loss["log_terms"] or ())
    _check_weights(loss["weights"], loss["log_terms"])
    weights = {**default_loss_weights(), **loss["weights"]}
    if not loss["query_guidance"]:
        # The baseline without query guidance: item-item contrast only.
        weights = {name: 0.0 for name in weights} | {"pair": loss["weights"].get("pair", 1.0)}
    if model["caption"] is None:
        weights["caption"] = 0.0  # no decoder configured: no caption term
    return weights


def default_loss_weights() -> dict[str, float]:
    from real20m.losses.terms import default_weights
    return default_weights()


def default_lr_mult() -> dict[str, float]:
    return default_multipliers(QCD_LR_GROUPS)


def _check_weights(weights: Mapping, log_terms) -> None:
    from real20m.losses.terms import TERMS
    unknown = sorted((set(weights) | set(log_terms or ())) - set(TERMS))
    if unknown:
        raise ConfigError(f"loss.weights: unknown term(s) {unknown}; known: {sorted(TERMS)}")


def _check_lr_mult(lr_mult: Mapping) -> None:
    unknown = sorted(set(lr_mult) - set(default_lr_mult()))
    if unknown:
        raise ConfigError(f"optim.lr_mult: unknown group(s) {unknown}; known: {sorted(default_lr_mult())}")
