"""Learning-rate groups: the parts of a model that train at a learning rate of their own.

A model declares its groups (``QCDModel.LR_GROUPS``): each a name, the parameter-name prefix of
its part, the multiplier of the base learning rate it trains at unless ``optim.lr_mult.<name>``
says otherwise, and what it is, in words. The optimizer's parameter groups, the
``--optim.lr_mult.<name>`` options and the check of ``optim.lr_mult`` all follow from that one
declaration. This module imports no torch, so that the configuration can read it before anything
heavy is imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class LRGroup:
    name: str
    prefix: str          # the parameters whose names start with it ("text." for model.text)
    multiplier: float    # of the base learning rate, unless optim.lr_mult names the group
    description: str     # what the part is ("the text tower"), for help texts


# The paper's multipliers: pretrained towers 1e-2 / 1e-3 of the base LR, new fusion layers the
# full LR. The order is the optimizer's group order, which resumed optimizer states rely on.
QCD_LR_GROUPS = (
    LRGroup("text", "text.", 1e-2, "the text tower"),
    LRGroup("vision", "vision.", 1e-3, "the vision tower"),
    LRGroup("fusion", "pooling.", 1.0, "the attention pooling"),
    LRGroup("frame", "frame.", 1e-2, "the frame transformer"),
    LRGroup("caption", "caption.", 1e-3, "the caption decoder"),
    LRGroup("category", "category_head.", 1.0, "the goods-category classification head"),
)


def default_multipliers(groups: Iterable[LRGroup]) -> dict[str, float]:
    return {group.name: group.multiplier for group in groups}


def grouped_parameters(named_parameters: Iterable[tuple[str, object]],
                       groups: Iterable[LRGroup]) -> dict[str, list]:
    """{group name: the parameters its prefix selects, in the model's order}. A parameter that no
    prefix (or two) selects is left out (or put in both), for the caller to refuse."""
    groups = tuple(groups)
    selected: dict[str, list] = {group.name: [] for group in groups}
    for name, param in named_parameters:
        for group in groups:
            if name.startswith(group.prefix):
                selected[group.name].append(param)
    return selected
