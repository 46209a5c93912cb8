"""Search backends behind one protocol (``registry.Searcher``): ``exact`` (streamed brute force),
``faiss`` (Faiss indexes, optionally sharded, saved and loaded). A new backend is one class
registered with ``register_search_backend``; Faiss is imported only when a Faiss backend runs.
"""

from real20m.evaluate.searchers import exact, sharded  # noqa: F401  (the built-in backends register themselves)
from real20m.evaluate.searchers.registry import (SEARCH_BACKENDS, IndexFileError, SavedGallery, Searcher,
                                                 SearchBackendError, backend_for, is_index_folder, load_searcher,
                                                 open_searcher, read_index_meta, register_search_backend)
from real20m.evaluate.searchers.sharded import describe_gallery

__all__ = ["SEARCH_BACKENDS", "IndexFileError", "SavedGallery", "Searcher", "SearchBackendError", "backend_for",
           "describe_gallery", "is_index_folder", "load_searcher", "open_searcher", "read_index_meta", "register_search_backend"]
