import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from real20m.evaluate.faiss_backend import (SearchDevice, SearchDeviceError, faiss_description, parse_use_gpu,
                                            resolve_search_device)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_FAISS = SimpleNamespace(__version__="1.15.1")   # the CPU wheel: no GPU resources class


def _gpu_faiss(n_gpus):
    return SimpleNamespace(__version__="1.14.1", StandardGpuResources=object, get_num_gpus=lambda: n_gpus)


def test_parse_use_gpu_accepts_the_three_words_any_case_and_bools():
    assert [parse_use_gpu(v) for v in ("auto", "ALWAYS", "Never", True, False)] == \
        ["auto", "always", "never", "always", "never"]
    with pytest.raises(ValueError, match="use_gpu must be one of auto, always, never"):
        parse_use_gpu("sometimes")
    with pytest.raises(ValueError):
        parse_use_gpu(1)


def test_always_names_what_to_install_or_what_is_missing():
    with pytest.raises(SearchDeviceError) as error:
        resolve_search_device("always", CPU_FAISS)
    assert str(error.value) == ("--use_gpu always: Faiss 1.15.1 is the CPU build; "
                                "pip uninstall -y faiss-cpu && pip install -e '.[gpu]' (faiss-gpu-cu12)")
    with pytest.raises(SearchDeviceError, match="GPU build of Faiss 1.14.1 sees no GPU; check nvidia-smi"):
        resolve_search_device(True, _gpu_faiss(0))
    assert resolve_search_device("always", _gpu_faiss(2)) == SearchDevice(2)


def test_auto_falls_back_to_the_cpu_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="real20m.evaluate.faiss_backend"):
        device = resolve_search_device("auto", CPU_FAISS)
    assert device.n_gpus == 0 and device.note == "--use_gpu auto: searching on the CPU because Faiss 1.15.1 is the CPU build"
    assert [record.getMessage() for record in caplog.records] == [device.note]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="real20m.evaluate.faiss_backend"):
        assert resolve_search_device("auto", _gpu_faiss(0)).note.endswith("the GPU build of Faiss 1.14.1 sees no GPU")
        assert resolve_search_device("auto", _gpu_faiss(3)) == SearchDevice(3)   # no fallback, nothing logged
        assert resolve_search_device("never", _gpu_faiss(3)) == SearchDevice(0)
    assert len(caplog.records) == 1


def test_faiss_description():
    assert faiss_description(CPU_FAISS) == {"faiss_version": "1.15.1", "faiss_build": "cpu"}
    assert faiss_description(_gpu_faiss(1)) == {"faiss_version": "1.14.1", "faiss_build": "gpu"}


# A None entry in sys.modules makes ``import faiss`` fail as if it were not installed.
WITHOUT_FAISS = "import sys; sys.modules['faiss'] = None; "


def _python(code, *args):
    return subprocess.run([sys.executable, "-c", WITHOUT_FAISS + code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_search_without_faiss_names_the_extras_in_one_line():
    result = _python("import numpy as np\n"
                     "from real20m.evaluate.faiss_backend import FaissNotInstalledError\n"
                     "from real20m.evaluate.search import search\n"
                     "from real20m.evaluate.search_config import SearchConfig\n"
                     "gallery = np.eye(2, dtype=np.float32)\n"
                     "try:\n    search(gallery, gallery, 1, SearchConfig(use_gpu='never'))\n"
                     "except FaissNotInstalledError as error:\n    print(error)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "Faiss is not installed" in result.stdout
    assert "real20m[cpu] or real20m[gpu]" in result.stdout


def test_evaluation_entry_point_without_faiss_fails_with_one_line(tmp_path):
    # Importing the entry point needs no Faiss: --help works; a search names the extra to install.
    assert _python("import runpy; runpy.run_path('evaluation.py', run_name='__main__')", "--help").returncode == 0
    from real20m.evaluate.feature_io import write_legacy_features
    write_legacy_features(str(tmp_path / "f.feat"), [1, 2], [[1.0, 0.0], [0.0, 1.0]])
    (tmp_path / "gt.txt").write_text("video/images/1/1_0.jpg\tgoods/images/2/2.jpg\n")
    result = _python("import runpy; runpy.run_path('evaluation.py', run_name='__main__')",
                     "--query_features", str(tmp_path / "f.feat"), "--gallery_features", str(tmp_path / "f.feat"),
                     "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(tmp_path / "eval"), "--quiet")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: Faiss is not installed") and result.stderr.count("\n") == 1
    assert "real20m[cpu] or real20m[gpu]" in result.stderr


@pytest.mark.parametrize("flags, expected", [({"avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq",
                                                "avx512vl"}, "SkylakeX"), ({"avx2", "fma", "avx512f"}, "Haswell"),
                                              ({"sse4_2"}, None)])
def test_faiss_loads_with_the_openblas_kernels_the_cpu_runs_and_the_variable_is_gone_after(monkeypatch, flags,
                                                                                          expected):
    from real20m.evaluate import faiss_backend
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.setattr(faiss_backend, "_cpu_flags", lambda: flags)
    with faiss_backend._openblas_coretype():
        assert os.environ.get("OPENBLAS_CORETYPE") == expected
    assert "OPENBLAS_CORETYPE" not in os.environ


def test_a_coretype_the_user_set_is_kept(monkeypatch):
    from real20m.evaluate import faiss_backend
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    with faiss_backend._openblas_coretype():
        assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"
