"""The command-line options, read from the schema's field metadata: for each, the dotted path its
value goes to, its flags (the original release's names and short forms included), its type and
its help text. Options that set one entry of a mapping field follow that field's own option."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from real20m.config.schema import SECTIONS, Config
from real20m.models.lr_groups import QCD_LR_GROUPS


@dataclass(frozen=True)
class Option:
    """One command-line option: where its value goes, how it is parsed, what it means."""

    path: str                       # "section.field" or "section.field.key" (inside a mapping)
    help: str
    flags: tuple[str, ...] = ()     # default: ("--<field>",)
    type: Callable | None = None
    choices: tuple | Callable[[], tuple] | None = None   # a callable: a registry's keys when parsing
    bare: Any = None                # value of the bare flag (``--hard_sample`` = True)

    @property
    def flag_names(self) -> tuple[str, ...]:
        return self.flags or (f"--{self.path.split('.')[-1]}",)


# The original release's flags for the multipliers of the model's LR groups.
ORIGINAL_LR_FLAGS = {"text": "--text_lr_factor", "vision": "--image_lr_factor", "fusion": "--fusion_lr_factor",
                     "frame": "--video_fusion_factor", "caption": "--text_generation_factor"}


def _lr_mult_options() -> tuple[Option, ...]:
    """``optim.lr_mult.<group>`` for each LR group the model declares; its flag is the original's
    name, or for a group the original lacks the dotted path itself."""
    return tuple(Option(f"optim.lr_mult.{group.name}", f"LR multiplier of {group.description}",
                        (ORIGINAL_LR_FLAGS.get(group.name, f"--optim.lr_mult.{group.name}"),), type=float)
                 for group in QCD_LR_GROUPS)


# Options of single entries of a mapping field, by the field's path.
ENTRY_OPTIONS: dict[str, tuple[Option, ...]] = {
    "loss.weights": (Option("loss.weights.consistency", "weight of mean((fused - visual)^2)",
                            ("--delta", "--delta_factor"), type=float),),
    "optim.lr_mult": _lr_mult_options(),
}


def _section_options(section: str) -> Iterator[Option]:
    """The options of the fields of ``section`` that carry a help text, in field order."""
    for item in dataclasses.fields(getattr(Config(), section)):
        if "help" in item.metadata:
            path = f"{section}.{item.name}"
            yield Option(path, item.metadata["help"], item.metadata["flags"], item.metadata["type"],
                         item.metadata["choices"], item.metadata["bare"])
            yield from ENTRY_OPTIONS.get(path, ())


OPTIONS: tuple[Option, ...] = tuple(option for section in SECTIONS for option in _section_options(section))

# A YAML file's flat top-level keys (``clip_length: 8``), as older files wrote them: flag -> path.
FLAT_NAMES = {name.lstrip("-"): option.path for option in OPTIONS for name in option.flag_names
              if name.startswith("--")}
