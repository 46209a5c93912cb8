"""One Faiss index over gallery rows: built from an ``index_factory`` string, trained on a sample,
placed on a device, tuned, written and read. ``sharded`` puts one or more of them behind the
``faiss`` search backend.

An index always uses the inner-product metric (features are L2-normalised). It is trained once,
on a random sample of ``train_size`` rows read in row order from the memory-mapped shards.
"""

import warnings

import numpy as np

from real20m.evaluate.faiss_backend import import_faiss
from real20m.evaluate.feature_io import read_rows, read_sample
from real20m.utils.atomic import atomic_path


def training_sample(gallery, train_size, seed=0):
    """``train_size`` distinct gallery rows drawn with ``seed`` (all rows when the gallery is smaller)."""
    n_rows = len(gallery)
    if n_rows <= train_size:
        return read_rows(gallery, 0, n_rows)
    rows = np.sort(np.random.default_rng(seed).choice(n_rows, size=train_size, replace=False))
    return read_sample(gallery, rows)


def train_index(gallery, factory, train_size, seed=0, verbose=False):
    """A trained, empty CPU index for vectors of ``gallery``'s dimension (inner-product metric)."""
    faiss = import_faiss()
    index = faiss.index_factory(gallery.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = training_sample(gallery, train_size, seed)
        index.verbose = verbose   # Faiss then prints each k-means iteration: the progress of training
        index.train(sample)
        index.verbose = False
    return index


class Devices:
    """Where index ``i`` lives: the CPU, or GPU ``i % n_gpus`` (one Faiss resource object per GPU)."""

    def __init__(self, n_gpus):
        self.n_gpus = n_gpus
        self.resources = {}
        self.used = set()   # the GPUs that really hold an index (metrics.json reports them)

    def place(self, index, number):
        if not self.n_gpus:
            return index
        faiss = import_faiss()
        device = number % self.n_gpus
        if device not in self.resources:
            self.resources[device] = faiss.StandardGpuResources()
        try:
            placed = faiss.index_cpu_to_gpu(self.resources[device], device, index)
            self.used.add(device)
            return placed
        except RuntimeError as error:   # e.g. HNSW has no GPU implementation
            warnings.warn(f"this index stays on the CPU: Faiss cannot move it to a GPU ({error})")
            return index


def on_gpu(index):
    gpu_index_class = getattr(import_faiss(), "GpuIndex", None)
    return gpu_index_class is not None and isinstance(index, gpu_index_class)


def set_search_parameters(index, nprobe=None, params=None):
    """``nprobe`` and any Faiss ParameterSpace string (e.g. ``efSearch=128``) on one index."""
    faiss = import_faiss()
    space = faiss.GpuParameterSpace() if on_gpu(index) else faiss.ParameterSpace()
    if nprobe is not None:
        space.set_index_parameter(index, "nprobe", int(nprobe))
    if params:
        space.set_index_parameters(index, params)


def write_index(index, path):
    """``index`` (copied to the CPU when it lives on a GPU) to ``path``, complete or not at all."""
    faiss = import_faiss()
    with atomic_path(path, path + ".tmp") as temp:
        faiss.write_index(faiss.index_gpu_to_cpu(index) if on_gpu(index) else index, temp)


def read_index(path):
    """The Faiss index in ``path``; RuntimeError when Faiss cannot read it."""
    return import_faiss().read_index(path)
