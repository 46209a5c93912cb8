"""How a gallery is searched: one frozen value built once (from argparse in ``evaluation.py``,
from typed keyword values in ``Retriever``) and read by every search backend."""

from dataclasses import dataclass

from real20m.evaluate.faiss_backend import parse_use_gpu

DEFAULT_QUERY_CHUNK = 512
DEFAULT_GALLERY_CHUNK = 1 << 20
DEFAULT_TRAIN_SIZE = 262144
EXACT_NAMES = (None, "", "Flat", "exact")   # what --index accepts for exact search


def is_exact(index_factory):
    return index_factory in EXACT_NAMES


@dataclass(frozen=True)
class SearchConfig:
    """What to build or load and how to search it.

    ``index``: a Faiss ``index_factory`` string, or exact search (None, "Flat", "exact").
    ``backend``: a name in ``real20m.evaluate.searchers.SEARCH_BACKENDS``; None picks the saved
    folder's (``load_index``), else exact or Faiss by ``index``.
    ``use_gpu``: ``auto`` / ``always`` / ``never`` (True / False accepted), see ``faiss_backend``.
    ``shards``, ``train_size``, ``seed``, ``nprobe``, ``params``: approximate indexes only.
    ``chunk_size``: gallery rows read (and, exact, searched) at a time; ``query_chunk``: queries
    per search call. ``show_progress``: progress bars (and Faiss's training log) on stderr.
    """

    index: str | None = None
    backend: str | None = None
    nprobe: int | None = None
    params: str | None = None
    shards: int | None = None
    train_size: int = DEFAULT_TRAIN_SIZE
    seed: int = 0
    chunk_size: int = DEFAULT_GALLERY_CHUNK
    query_chunk: int = DEFAULT_QUERY_CHUNK
    use_gpu: str = "auto"
    save_index: str | None = None
    load_index: str | None = None
    show_progress: bool = True

    def __post_init__(self):
        # The one normalisation: the Python API's True / False become the words the CLI records.
        object.__setattr__(self, "use_gpu", parse_use_gpu(self.use_gpu))

    @property
    def exact(self) -> bool:
        return is_exact(self.index)
