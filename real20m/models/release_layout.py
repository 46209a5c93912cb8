"""The parameter layout of the checkpoints released with the Real20M paper, mapped onto QCDModel.

A release checkpoint is a dict with three weight sections written by DistributedDataParallel
(every key starts with `module.`) using Chinese-CLIP (`cn_clip`) parameter names:

    state_dict        visual_model.*                      the fine-tuned vision tower
    doc_text_model    text_model.*, text_projection        the text tower, plus duplicates
                      (clip_model.bert.*, clip_model.text_projection) and an unused copy of the
                      vision tower (clip_model.visual.*) with clip_model.logit_scale
    doc_fusion_model  attention_pooling.*, video_attention_pooling.*

`map_release_checkpoint` turns that into a QCDModel state dict. Every tensor of the three sections
is either mapped, verified as a duplicate, or on an explicit ignore list; anything else is an
error listing the offending keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from real20m.errors import InputError

WEIGHT_SECTIONS = ("state_dict", "doc_text_model", "doc_fusion_model")

# Top-level entries the original training loop writes next to the weights; none is needed to embed.
IGNORED_TOP_LEVEL = (
    "epoch", "global_step", "text_generation_model", "text_optimizer", "image_optimizer",
    "fusion_optimizer", "video_fusion_optimizer", "text_generation_optimizer",
)

# Text-section entries that are not part of the model we embed with (reason in the summary).
IGNORED_TEXT_PREFIXES = {
    "clip_model.visual.": "unused vision copy inside the text wrapper (never trained)",
    "clip_model.logit_scale": "CLIP logit scale (not used to embed)",
}

# The paper's model: cn_clip ViT-B-16 + RoBERTa-wwm-ext-base-chinese, embed 512, T = 5.
PAPER_RELEASE_CONFIG = {
    "clip_constructor_kwargs": {
        "embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
        "vision_patch_size": 16, "vocab_size": 21128, "text_attention_probs_dropout_prob": 0.1,
        "text_hidden_act": "gelu", "text_hidden_dropout_prob": 0.1, "text_hidden_size": 768,
        "text_initializer_range": 0.02, "text_intermediate_size": 3072,
        "text_max_position_embeddings": 512, "text_num_attention_heads": 12,
        "text_num_hidden_layers": 12, "text_type_vocab_size": 2, "vision_head_width": 64,
    },
    "fusion": {"frame_transformer": {"T": 5, "embed_dim": 512, "layers": 1, "heads": 8, "mlp_hidden": 2048}},
}


class ReleaseLayoutError(InputError, ValueError):
    """A checkpoint does not match the expected layout; the message lists the offending keys."""


class WeightMismatchError(InputError, ValueError):
    """Checkpoint tensors do not fit the model: the message lists missing, unexpected and
    wrongly shaped keys."""


def model_config_from_release(release_cfg: dict | None) -> dict:
    """QCD model_cfg for a cn_clip-style configuration.

    `release_cfg` is either {"clip_constructor_kwargs": {...}, "fusion": {...}} (the fixture's
    config.json) or the bare cn_clip constructor kwargs; None means the paper's configuration.
    """
    release_cfg = PAPER_RELEASE_CONFIG if release_cfg is None else release_cfg
    clip = release_cfg.get("clip_constructor_kwargs", release_cfg)
    frame = (release_cfg.get("fusion") or {}).get("frame_transformer", {})
    embed_dim = int(clip["embed_dim"])
    if not isinstance(clip["vision_layers"], int):
        raise ReleaseLayoutError(
            f"only ViT vision towers are supported; vision_layers={clip['vision_layers']!r} is a ResNet")
    _check_frame_transformer(frame, embed_dim)
    width = int(clip["vision_width"])
    return {
        "backbone": "chinese_clip",
        "pretrained": None,
        "text": {
            "vocab_size": int(clip["vocab_size"]),
            "hidden_size": int(clip["text_hidden_size"]),
            "num_hidden_layers": int(clip["text_num_hidden_layers"]),
            "num_attention_heads": int(clip["text_num_attention_heads"]),
            "intermediate_size": int(clip["text_intermediate_size"]),
            "max_position_embeddings": int(clip["text_max_position_embeddings"]),
            "type_vocab_size": int(clip.get("text_type_vocab_size", 2)),
            "hidden_act": clip.get("text_hidden_act", "gelu"),
            "hidden_dropout_prob": float(clip.get("text_hidden_dropout_prob", 0.1)),
            "attention_probs_dropout_prob": float(clip.get("text_attention_probs_dropout_prob", 0.1)),
            "initializer_range": float(clip.get("text_initializer_range", 0.02)),
            "layer_norm_eps": 1e-12,  # cn_clip's BertLayerNorm
        },
        "vision": {
            "hidden_size": width,
            "num_hidden_layers": int(clip["vision_layers"]),
            "num_attention_heads": width // int(clip.get("vision_head_width", 64)),
            "intermediate_size": 4 * width,
            "image_size": int(clip["image_resolution"]),
            "patch_size": int(clip["vision_patch_size"]),
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
        "timm_name": None,
        "embed_dim": embed_dim,
        "clip_length": int(frame.get("T", 5)),
        "frame_heads": int(frame.get("heads", 8)),
        "caption": None,
        "gradient_checkpointing": False,
        "use_title_mask": False,  # the original embeds titles without an attention mask
    }


def _check_frame_transformer(frame: dict, embed_dim: int) -> None:
    expected = {"embed_dim": embed_dim, "layers": 1, "mlp_hidden": 4 * embed_dim}
    wrong = {k: (frame[k], v) for k, v in expected.items() if k in frame and int(frame[k]) != v}
    if wrong:
        raise ReleaseLayoutError(f"unsupported frame transformer settings (got, supported): {wrong}")


def is_release_checkpoint(checkpoint) -> bool:
    return isinstance(checkpoint, dict) and all(s in checkpoint for s in WEIGHT_SECTIONS)


@dataclass
class MappingReport:
    mapped: dict[str, int] = field(default_factory=dict)          # section -> source tensors used
    duplicates_verified: int = 0
    ignored: dict[str, int] = field(default_factory=dict)         # reason -> count
    ignored_top_level: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)         # target key -> source key

    def summary(self) -> str:
        mapped = ", ".join(f"{s}: {n}" for s, n in self.mapped.items())
        ignored = "; ".join(f"{n} x {reason}" for reason, n in self.ignored.items()) or "none"
        known = ", ".join(k for k in self.ignored_top_level if k in IGNORED_TOP_LEVEL) or "none"
        unknown = [k for k in self.ignored_top_level if k not in IGNORED_TOP_LEVEL]
        text = (f"release checkpoint mapped ({mapped} source tensors), {self.duplicates_verified} duplicates "
                f"verified equal, ignored tensors: {ignored}; ignored top-level entries: {known}")
        return text + (f"; unknown top-level entries (ignored): {', '.join(unknown)}" if unknown else "")


def strip_ddp_prefix(key: str) -> str:
    """A state-dict key without the `module.` prefix DistributedDataParallel adds."""
    return key[len("module."):] if key.startswith("module.") else key


# ------------------------------------------------------------------------------------- vision
_VISION_FIXED = {
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "conv1.weight": "embeddings.patch_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias",
}
_VISION_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")


def _map_vision_key(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """One cn_clip VisualTransformer tensor -> [(QCDModel key, tensor)], None if unknown."""
    tower = "vision.encoder."
    if name == "proj":  # used as x @ proj, i.e. [in, out]; nn.Linear stores [out, in]
        return [("vision.projection.weight", tensor.t())]
    if name in _VISION_FIXED:
        return [(tower + _VISION_FIXED[name], tensor)]
    match = _BLOCK_KEY.fullmatch(name)
    if match is None:
        return None
    layer, rest = match.groups()
    prefix = f"{tower}encoder.layers.{layer}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        suffix = "weight" if rest.endswith("weight") else "bias"
        q, k, v = tensor.chunk(3, dim=0)  # rows are (q, k, v)
        return [(f"{prefix}self_attn.{p}_proj.{suffix}", t) for p, t in zip("qkv", (q, k, v))]
    if rest in _VISION_BLOCK:
        return [(prefix + _VISION_BLOCK[rest], tensor)]
    return None


# ------------------------------------------------------------------------------------- fusion
def _map_fusion_key(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    if name.startswith("attention_pooling.projection."):
        return [("pooling." + name[len("attention_pooling."):], tensor)]
    if name == "video_attention_pooling.positional_embedding" or name.startswith("video_attention_pooling.resblocks."):
        return [("frame." + name[len("video_attention_pooling."):], tensor)]
    return None


# --------------------------------------------------------------------------------------- text
def _text_aliases(section: dict[str, torch.Tensor]) -> dict[str, str]:
    """Duplicate key -> primary key. text_model.* / text_projection are primary (the wrapper's
    forward uses them); clip_model.bert.* / clip_model.text_projection are the same tensors."""
    aliases = {}
    for name in section:
        if name.startswith("clip_model.bert."):
            aliases[name] = "text_model." + name[len("clip_model.bert."):]
        elif name == "clip_model.text_projection":
            aliases[name] = "text_projection"
    return aliases


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:  # shape-only dry runs: meta tensors hold no values to compare
        return True
    return torch.equal(a, b)


def _map_text_section(section: dict[str, torch.Tensor], report: MappingReport, out: dict, unexpected: list):
    aliases = _text_aliases(section)
    for name, tensor in section.items():
        reason = next((r for p, r in IGNORED_TEXT_PREFIXES.items() if name.startswith(p)), None)
        if reason is not None:
            report.ignored[reason] = report.ignored.get(reason, 0) + 1
            continue
        primary = aliases.get(name)
        if primary is not None and primary in section:
            if not _same_values(tensor, section[primary]):
                raise ReleaseLayoutError(
                    f"doc_text_model: module.{name} should duplicate module.{primary} but the values differ")
            report.duplicates_verified += 1
            continue
        canonical = primary or name  # a lone duplicate stands in for its missing primary
        source = f"doc_text_model: module.{name}"
        if canonical == "text_projection":  # used as x @ M, i.e. [in, out]
            _put(out, report, "text.projection.weight", tensor.t(), source)
        elif canonical.startswith("text_model."):  # cn_clip BERT names equal the HF ones
            _put(out, report, "text.encoder." + canonical[len("text_model."):], tensor, source)
        else:
            unexpected.append(source)
            continue
        report.mapped["doc_text_model"] = report.mapped.get("doc_text_model", 0) + 1


def _put(out: dict, report: MappingReport, target: str, tensor: torch.Tensor, source: str) -> None:
    if target in out:
        raise ReleaseLayoutError(f"two checkpoint keys map to {target}: {report.sources[target]} and {source}")
    out[target] = tensor
    report.sources[target] = source


def map_release_checkpoint(checkpoint: dict) -> tuple[dict[str, torch.Tensor], MappingReport]:
    """Release checkpoint dict -> (QCDModel state dict without caption keys, report)."""
    if not is_release_checkpoint(checkpoint):
        missing = [s for s in WEIGHT_SECTIONS if s not in checkpoint]
        raise ReleaseLayoutError(f"not a Real20M release checkpoint: missing sections {missing}")
    report = MappingReport()
    report.ignored_top_level = sorted(k for k in checkpoint if k not in WEIGHT_SECTIONS)
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []

    for section_name, mapper, prefix in (("state_dict", _map_vision_key, "visual_model."),
                                         ("doc_fusion_model", _map_fusion_key, "")):
        for key, tensor in checkpoint[section_name].items():
            name = strip_ddp_prefix(key)
            pairs = mapper(name[len(prefix):], tensor) if name.startswith(prefix) else None
            if pairs is None:
                unexpected.append(f"{section_name}: {key}")
                continue
            for target, value in pairs:
                _put(out, report, target, value, f"{section_name}: {key}")
            report.mapped[section_name] = report.mapped.get(section_name, 0) + 1

    text = {strip_ddp_prefix(k): v for k, v in checkpoint["doc_text_model"].items()}
    _map_text_section(text, report, out, unexpected)
    if unexpected:
        raise ReleaseLayoutError(f"{len(unexpected)} unexpected checkpoint keys: {sorted(unexpected)}")
    return out, report


# ------------------------------------------------------------------------ architecture by shape
# A release checkpoint stores tensors, not its constructor arguments. Every size can be read off
# a shape; the number of attention heads cannot, so it follows the paper's 64-wide heads.
ASSUMED_HEAD_WIDTH = 64


def _shape(section: dict, key: str) -> tuple[int, ...] | None:
    tensor = section.get("module." + key, section.get(key))
    return None if tensor is None else tuple(tensor.shape)


def _count_layers(section: dict, pattern: str) -> int:
    found = {int(match.group(1)) for key in section
             if (match := re.search(pattern, strip_ddp_prefix(key))) is not None}
    return max(found) + 1 if found else 0


def _text_prefix(text: dict) -> str:
    has_primary = _shape(text, "text_model.embeddings.word_embeddings.weight") is not None
    return "text_model." if has_primary else "clip_model.bert."


def release_config_from_shapes(checkpoint: dict) -> dict | None:
    """The cn_clip-style configuration a release checkpoint's tensor shapes describe (heads
    assumed ``ASSUMED_HEAD_WIDTH`` wide), or None when a tensor it needs is missing."""
    vision, text, fusion = (checkpoint[name] for name in WEIGHT_SECTIONS)
    bert = _text_prefix(text)
    shapes = {
        "conv": _shape(vision, "visual_model.conv1.weight"),
        "positions": _shape(vision, "visual_model.positional_embedding"),
        "proj": _shape(vision, "visual_model.proj"),
        "words": _shape(text, bert + "embeddings.word_embeddings.weight"),
        "text_positions": _shape(text, bert + "embeddings.position_embeddings.weight"),
        "token_types": _shape(text, bert + "embeddings.token_type_embeddings.weight"),
        "intermediate": _shape(text, bert + "encoder.layer.0.intermediate.dense.weight"),
        "frames": _shape(fusion, "video_attention_pooling.positional_embedding"),
    }
    if any(shape is None for shape in shapes.values()):
        return None
    width, patch = shapes["conv"][0], shapes["conv"][-1]
    grid = round((shapes["positions"][0] - 1) ** 0.5)
    hidden = shapes["words"][1]
    clip = {
        "embed_dim": shapes["proj"][1], "image_resolution": grid * patch,
        "vision_layers": _count_layers(vision, r"visual_model\.transformer\.resblocks\.(\d+)\."),
        "vision_width": width, "vision_patch_size": patch, "vision_head_width": ASSUMED_HEAD_WIDTH,
        "vocab_size": shapes["words"][0], "text_hidden_size": hidden,
        "text_num_hidden_layers": _count_layers(text, re.escape(bert) + r"encoder\.layer\.(\d+)\."),
        "text_num_attention_heads": max(1, hidden // ASSUMED_HEAD_WIDTH),
        "text_intermediate_size": shapes["intermediate"][0],
        "text_max_position_embeddings": shapes["text_positions"][0], "text_type_vocab_size": shapes["token_types"][0],
    }
    frames = shapes["frames"]
    return {"clip_constructor_kwargs": clip,
            "fusion": {"frame_transformer": {"T": frames[1], "embed_dim": frames[2]}}}


def release_architecture(checkpoint: dict, release_cfg: dict | None, config_name: str | None) -> tuple[dict, str]:
    """(model_cfg, how it was chosen) of a release checkpoint: ``release_cfg`` (read from the file
    ``config_name``) when given, else the checkpoint's shapes, else the paper's ViT-B/16."""
    if release_cfg is not None:
        return model_config_from_release(release_cfg), f"the release config {config_name}"
    from_shapes = release_config_from_shapes(checkpoint)
    if from_shapes is not None:
        clip = from_shapes["clip_constructor_kwargs"]
        return model_config_from_release(from_shapes), (
            f"the checkpoint's tensor shapes (ViT {clip['vision_layers']} x {clip['vision_width']}, text "
            f"{clip['text_num_hidden_layers']} x {clip['text_hidden_size']}, embed {clip['embed_dim']}; "
            f"attention heads are not stored: {ASSUMED_HEAD_WIDTH}-wide assumed, --release_config sets them)")
    return model_config_from_release(None), "the paper's ViT-B/16 (no --release_config, shapes incomplete)"
