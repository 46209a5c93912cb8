"""The searcher protocol and the registry of search backends.

A backend is a class registered under a name. ``build(gallery, config, device)`` makes a searcher
over a gallery (an (N, D) array, possibly memory-mapped float16); a backend that saves index
folders names the ``index_format`` its ``meta.json`` records and reads such a folder back with
``load(folder, config, device, expected)``, so a saved folder picks its own backend.
"""

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from real20m.errors import InputError
from real20m.evaluate.faiss_backend import SearchDevice, resolve_search_device
from real20m.evaluate.feature_io import read_json
from real20m.evaluate.search_config import SearchConfig

META_FILE = "meta.json"
MAX_GPU_K = 2048   # Faiss GPU top-k limit
EXACT_ONLY_ERROR = ("--shards, --save_index and --load_index need an approximate --index "
                    "(exact search already streams the gallery in chunks of --chunk_size rows)")


class IndexFileError(InputError, ValueError):
    """A saved index folder that cannot be used for this gallery; the message names it."""


class SearchBackendError(InputError, ValueError):
    """A backend name that is not registered; the message lists the registered ones."""


class Searcher(Protocol):
    """Top-k inner-product search over one gallery of ``size`` rows of dimension ``dim``."""

    size: int
    dim: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (q, k), gallery rows int64 (q, k)); row -1 where fewer than k were found."""

    def describe(self) -> dict:
        """What ran, as metrics.json records it: ``index``, ``device``, ``num_gpus``,
        ``device_note``, ``faiss_version``, ``faiss_build``."""

    def save(self, folder: str, gallery_description: dict) -> None:
        """Write an index folder (``meta.json`` last) that ``load`` reads back."""


@dataclass(frozen=True)
class SavedGallery:
    """What a loaded index folder must have been built for: the dimension and ``describe_gallery``."""

    dim: int
    description: dict


SEARCH_BACKENDS = {}


def register_search_backend(name):
    """Class decorator: the backend ``--search_backend NAME`` / ``SearchConfig(backend=NAME)`` selects."""
    def register(backend):
        backend.name = name
        SEARCH_BACKENDS[name] = backend
        return backend
    return register


def get_search_backend(name):
    if name not in SEARCH_BACKENDS:
        raise SearchBackendError(f"unknown search backend {name!r}; registered: {', '.join(sorted(SEARCH_BACKENDS))}")
    return SEARCH_BACKENDS[name]


def _saved_formats():
    return {backend.index_format: backend for backend in SEARCH_BACKENDS.values()
            if getattr(backend, "index_format", None)}


def read_index_meta(folder):
    """``meta.json`` of a saved index folder, refused unless a registered backend wrote its format."""
    path = os.path.join(folder, META_FILE)
    meta = read_json(path, IndexFileError, "the index description")
    formats = _saved_formats()
    if not isinstance(meta, dict) or meta.get("format") not in formats:
        expected = " or ".join(repr(name) for name in formats)
        raise IndexFileError(f"{path}: not a saved real20m index (format {expected} expected)")
    return meta


def is_index_folder(path):
    """Whether ``path`` is a folder holding an index saved by a registered backend."""
    if not os.path.isfile(os.path.join(path, META_FILE)):
        return False
    try:
        read_index_meta(path)
    except ValueError:   # unreadable or another format: not an index folder (a feature folder, say)
        return False
    return True


def backend_of_folder(folder):
    """The backend that wrote the saved index in ``folder``."""
    return _saved_formats()[read_index_meta(folder)["format"]]


def backend_for(config: SearchConfig):
    """The backend ``config`` names, else the saved folder's, else exact or Faiss by ``config.index``."""
    if config.backend is not None:
        return get_search_backend(config.backend)
    if config.load_index:
        return backend_of_folder(config.load_index)
    return get_search_backend("exact" if config.exact else "faiss")


def check_gpu_depth(k, gallery_size, device: SearchDevice):
    """Faiss on a GPU returns at most MAX_GPU_K results: refuse a deeper search before building anything."""
    if device.n_gpus and min(k, gallery_size) > MAX_GPU_K:
        raise ValueError(f"Faiss on GPU supports k <= {MAX_GPU_K}, got k={min(k, gallery_size)}")


def open_searcher(gallery, config: SearchConfig, *, gallery_description=None, depth=None):
    """The searcher ``config`` describes over ``gallery``: loaded from ``config.load_index``, or
    built (and saved to ``config.save_index``).

    ``gallery_description`` (``describe_gallery``) is checked against a loaded folder and written
    into a saved one; ``depth``: the k that will be asked, refused here when the device
    (``config.use_gpu``) cannot return that many.
    """
    if len(gallery) == 0:
        raise ValueError("the gallery is empty")
    backend = backend_for(config)
    device = resolve_search_device(config.use_gpu)
    if depth is not None:
        check_gpu_depth(depth, len(gallery), device)
    description = gallery_description or {"num_items": len(gallery)}
    if config.load_index:
        return backend.load(config.load_index, config, device, SavedGallery(gallery.shape[1], description))
    searcher = backend.build(gallery, config, device)
    if config.save_index:
        searcher.save(config.save_index, description)
    return searcher


def load_searcher(folder, config: SearchConfig, expected: SavedGallery):
    """The saved index in ``folder``, searched by the backend that wrote it (no gallery features needed)."""
    backend = get_search_backend(config.backend) if config.backend else backend_of_folder(folder)
    return backend.load(folder, config, resolve_search_device(config.use_gpu), expected)
