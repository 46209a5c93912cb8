"""scripts/faiss_extra.sh: which Faiss extra `make install` installs, never the CPU one over a GPU build."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "faiss_extra.sh"


def _choose(tmp_path, faiss=None, gpu_listed=None, faiss_build=None):
    """Run the script with FAISS=``faiss``; ``gpu_listed``: what a fake nvidia-smi reports (None: none
    installed); ``faiss_build``: a module ``faiss`` the interpreter finds ("cpu", "gpu", None: none)."""
    root = tmp_path / str(len(list(tmp_path.iterdir())))   # a fresh folder per call: nothing carries over
    bin_dir, site = root / "bin", root / "site"
    bin_dir.mkdir(parents=True)
    site.mkdir()
    if gpu_listed is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + ("echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n" if gpu_listed
                                        else "echo 'No devices were found'; exit 6\n"))
        smi.chmod(0o755)
    if faiss_build is not None:
        (site / "faiss.py").write_text("class StandardGpuResources:\n    pass\n" if faiss_build == "gpu"
                                       else "def knn(*args):\n    pass\n")
    # -S keeps the real site-packages (and its faiss) out: the interpreter sees only the fixture module.
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    for tool in ("sh", "grep"):   # only these on PATH: a real nvidia-smi of this machine stays out
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "PYTHON": str(python), "PYTHONPATH": str(site)}
    if faiss is not None:
        env["FAISS"] = faiss
    return subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("gpu_listed, expected", [(None, "cpu"), (False, "cpu"), (True, "gpu")])
def test_auto_follows_nvidia_smi(tmp_path, gpu_listed, expected):
    for faiss_build in (None, "cpu"):
        result = _choose(tmp_path, "auto", gpu_listed, faiss_build)
        assert result.returncode == 0 and result.stdout == expected + "\n", result.stderr


def test_an_installed_gpu_build_is_never_replaced(tmp_path):
    for faiss in ("auto", "cpu", "gpu"):
        result = _choose(tmp_path, faiss, gpu_listed=False, faiss_build="gpu")
        assert result.returncode == 0 and result.stdout == ""
        assert "keeping the installed GPU build of Faiss" in result.stderr


def test_explicit_choice_and_bad_value(tmp_path):
    assert _choose(tmp_path, "gpu", gpu_listed=None, faiss_build="cpu").stdout == "gpu\n"
    assert _choose(tmp_path, "cpu", gpu_listed=True).stdout == "cpu\n"
    assert _choose(tmp_path, None, gpu_listed=None).stdout == "cpu\n"   # FAISS unset means auto
    bad = _choose(tmp_path, "cuda")
    assert bad.returncode == 2 and bad.stderr == "FAISS must be auto, cpu or gpu, not 'cuda'\n"
