"""Lazy re-exports for package ``__init__`` files (PEP 562).

A package that re-exports names from heavy submodules would otherwise import torch,
torchvision and transformers (about 0.9 GB resident) for a caller that only wanted a light
module such as the annotation parsers; and ``python -m package.module`` would import that
module twice.
"""
import importlib


def lazy_exports(package: str, exports: dict[str, list[str]]):
    """``(__getattr__, __dir__, __all__)`` for a package whose ``exports`` map submodule -> names."""
    module_of = {name: module for module, names in exports.items() for name in names}
    public = sorted(module_of)

    def __getattr__(name: str):
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{module_of[name]}", package), name)

    def __dir__():
        return public

    return __getattr__, __dir__, public
