"""The registries of the model's swappable parts that the configuration names: frame aggregations
(``model.frame_aggregation``) and title/visual fusions (``model.fusion``).

This module imports no model library, so that the configuration can list and check the names
before torch is imported. An entry is the part's class (or any callable building it), or the
``"module:attribute"`` path of one, imported when a model first builds it: the built-in parts are
registered below by path, an extension registers its class from its own module.

A frame aggregation is built as ``builder(width, clip_length, heads, init=...)`` and maps (B, T, D)
frame embeddings (T = clip_length, or 1 for a goods image) to a (B, D) L2-normalised embedding; it
has a ``gradient_checkpointing`` attribute the model sets. A fusion is built as
``builder(embed_dim)`` and maps (title, visual), each (B, D), to (fused (B, D) L2-normalised,
weights (B, 2) in the order title, visual).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from real20m.errors import InputError


class UnknownComponentError(InputError, ValueError):
    """A configuration names no registered part; the message lists those that are."""


class ComponentRegistry:
    """name -> builder, for the option ``option``; path entries are imported on first lookup."""

    def __init__(self, option: str):
        self.option = option
        self._entries: dict[str, Callable | str] = {}

    def register(self, name: str, builder: Callable | str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.option} {name!r} is already registered")
        self._entries[name] = builder

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def check(self, name: str) -> None:
        """An unknown name is one line listing the registered ones."""
        if name not in self._entries:
            raise UnknownComponentError(f"unknown {self.option} {name!r}; expected one of {list(self.names())}")

    def lookup(self, name: str) -> Callable:
        self.check(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attribute = entry.split(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry


FRAME_AGGREGATIONS = ComponentRegistry("model.frame_aggregation")
FRAME_AGGREGATIONS.register("transformer", "real20m.models.frame_transformer:FrameTransformer")
FRAME_AGGREGATIONS.register("mean", "real20m.models.frame_transformer:MeanFrames")
FRAME_AGGREGATIONS.register("xclip", "real20m.models.xclip:XClipAggregation")

FUSIONS = ComponentRegistry("model.fusion")
FUSIONS.register("attention", "real20m.models.pooling:AttentionPooling")
FUSIONS.register("title_only", "real20m.models.pooling:title_only")
FUSIONS.register("visual_only", "real20m.models.pooling:visual_only")
FUSIONS.register("combiner", "real20m.models.combiner:Combiner")
