"""The one place that imports Faiss, and the choice of where a search runs (CPU or GPUs).

Faiss is an optional dependency because its CPU and GPU builds are two PyPI packages that both
install the module ``faiss``: installing one over the other breaks the first, so the package
leaves the choice to the extras ``real20m[cpu]`` (faiss-cpu) and ``real20m[gpu]``
(faiss-gpu-cu12). This module itself imports without Faiss, so the entry points can name the
missing install in one line instead of a traceback.

``--use_gpu`` / ``use_gpu=``: ``auto`` (GPUs when this Faiss build sees any, else the CPU, and the
log says which and why), ``always`` (GPUs or a clear error), ``never``. The Python API also takes
``True`` (= always) and ``False`` (= never), as it did before the three words.

The faiss-cpu wheels bundle OpenBLAS 0.3.15, which does not know x86 CPUs released after it (e.g.
Intel family 6 model 207) and runs its generic SSE3 ("Prescott") kernels there: exact search then
spends 4-5x the time of numpy's GEMM of the same scores. OpenBLAS reads ``OPENBLAS_CORETYPE`` once,
as it loads, so Faiss is imported with it naming the kernels this CPU's features allow (unless the
user set it); it is removed again right after, and numpy's own OpenBLAS has loaded long before.
"""

import contextlib
import functools
import logging
import os
from dataclasses import dataclass

from real20m.errors import InputError

logger = logging.getLogger(__name__)

USE_GPU_CHOICES = ("auto", "always", "never")
INSTALL_HINT = "install real20m[cpu] or real20m[gpu], e.g. pip install -e '.[cpu]' (make install picks one)"
GPU_INSTALL_HINT = "pip uninstall -y faiss-cpu && pip install -e '.[gpu]' (faiss-gpu-cu12)"


class FaissNotInstalledError(InputError, ImportError):
    """``import faiss`` failed; the message says which extra to install."""


class SearchDeviceError(InputError, RuntimeError):
    """``use_gpu='always'`` where Faiss cannot search on a GPU; the message says what is missing."""


# OpenBLAS kernel families by the CPU flags (Linux /proc/cpuinfo names) they need, best first.
_OPENBLAS_CORETYPES = (("SkylakeX", {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}),
                       ("Haswell", {"avx2", "fma"}))


def _cpu_flags():
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


@contextlib.contextmanager
def _openblas_coretype():
    """OPENBLAS_CORETYPE set, for the duration, to the best kernel family this CPU runs."""
    flags = set() if "OPENBLAS_CORETYPE" in os.environ else _cpu_flags()
    coretype = next((name for name, needed in _OPENBLAS_CORETYPES if needed <= flags), None)
    if coretype is not None:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        yield
    finally:
        if coretype is not None:
            del os.environ["OPENBLAS_CORETYPE"]


@functools.cache
def import_faiss():
    """The ``faiss`` module, or FaissNotInstalledError naming the extras that provide it.

    Only the search backends call it, when they first search: importing the package needs no Faiss.
    """
    try:
        with _openblas_coretype():
            import faiss
    except ImportError as error:
        raise FaissNotInstalledError(f"Faiss is not installed ({error}): {INSTALL_HINT}") from None
    return faiss


def has_gpu_support(faiss):
    """Whether this is a GPU build of Faiss (the CPU wheel has no GPU resources class)."""
    return hasattr(faiss, "StandardGpuResources")


def faiss_description(faiss):
    """What metrics.json records about the library: its version and build."""
    return {"faiss_version": getattr(faiss, "__version__", "unknown"),
            "faiss_build": "gpu" if has_gpu_support(faiss) else "cpu"}


def parse_use_gpu(value):
    """``auto`` / ``always`` / ``never`` from those words (any case) or a bool; ValueError otherwise."""
    if value is True or value is False:
        return "always" if value else "never"
    if isinstance(value, str) and value.lower() in USE_GPU_CHOICES:
        return value.lower()
    raise ValueError(f"use_gpu must be one of {', '.join(USE_GPU_CHOICES)} (or True/False), got {value!r}")


@dataclass(frozen=True)
class SearchDevice:
    """Where a search runs: ``n_gpus`` GPUs (0: the CPU); ``note`` says why ``auto`` chose the CPU."""

    n_gpus: int
    note: str | None = None


def resolve_search_device(use_gpu, faiss=None):
    """The device for ``use_gpu``; raises SearchDeviceError for ``always`` without a usable GPU.

    ``faiss`` is the module to ask (tests pass a stand-in for a GPU build); default: the installed one.
    """
    mode = parse_use_gpu(use_gpu)
    if mode == "never":
        return SearchDevice(0)
    faiss = faiss if faiss is not None else import_faiss()
    version = getattr(faiss, "__version__", "unknown")
    if not has_gpu_support(faiss):
        reason = f"Faiss {version} is the CPU build"
        hint = GPU_INSTALL_HINT
    else:
        n_gpus = faiss.get_num_gpus()
        if n_gpus > 0:
            return SearchDevice(n_gpus)
        reason = f"the GPU build of Faiss {version} sees no GPU"
        hint = "check nvidia-smi and CUDA_VISIBLE_DEVICES"
    if mode == "always":
        raise SearchDeviceError(f"--use_gpu always: {reason}; {hint}")
    note = f"--use_gpu auto: searching on the CPU because {reason}"
    logger.warning(note)
    return SearchDevice(0, note)
