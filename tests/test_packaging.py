"""The package as users install it: a wheel built from this checkout, installed (not editable)
into a fresh virtual environment, every console entry point run from a folder outside the checkout."""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("real20m-train", "real20m-eval", "real20m-extract-frames", "real20m-convert",
                "real20m-make-synthetic", "real20m-search", "real20m-serve", "real20m-compare", "real20m-make-shards")
WITH_VERSION = ("real20m-train", "real20m-extract-frames", "real20m-convert", "real20m-search", "real20m-serve",
                "real20m-compare", "real20m-make-shards")
PACKAGE_DATA = ("real20m/configs/tiny.yaml", "real20m/configs/paper.yaml", "real20m/assets/tokenizer_zh/vocab.txt")
# What a build does not need and must not see: other engineers' data, runs and environments.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "Dataset",
                                    "outputs", ".pytest_cache")
TIMEOUT_S = 300


def setuptools_problem():
    """Why a wheel cannot be built here without the network, or None."""
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed"
    import setuptools
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    if (major, minor) < (68, 0):
        return f"setuptools {setuptools.__version__} is older than the 68 pyproject.toml requires"
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the wheel package to build wheels"
    return None


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_install_has_every_entry_point_and_the_packaged_configs(tmp_path):
    problem = setuptools_problem()
    if problem:
        pytest.skip(f"cannot build a wheel offline: {problem}")
    # Built from a copy: an in-tree setuptools build writes build/ and egg-info into the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
         str(wheels), str(source)])
    (wheel,) = wheels.glob("real20m-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_DATA) <= names, sorted(names)
    assert not any(name.startswith(("tests/", "tools/", "benchmarks/")) for name in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    venv_site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    # The dependencies (torch, ...) come from this interpreter's environment. A plain path line in a
    # .pth is appended to sys.path without running the .pth files inside it, so the editable
    # install of the checkout living there stays inactive, and the venv's own site-packages,
    # holding the wheel, comes first.
    Path(venv_site, "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    # --ignore-installed: the checkout's own real20m metadata is visible through the .pth; never touch it.
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import real20m, real20m.cli.train; print(real20m.__file__); "
                 "print(real20m.__version__)"], env=env, cwd=elsewhere).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(Path(venv_site).resolve()), where
    assert where[1] != "0+unknown"

    for name in ENTRY_POINTS:
        result = run([str(bin_dir / name), "--help"], env=env, cwd=elsewhere)
        assert result.stdout.startswith(f"usage: {name}"), (name, result.stdout[:500])
    for name in WITH_VERSION:
        assert run([str(bin_dir / name), "--version"], env=env, cwd=elsewhere).stdout.split() == [name, where[1]]
    printed = run([str(bin_dir / "real20m-train"), "--config", "paper", "--print_config"], env=env,
                  cwd=elsewhere).stdout
    assert "image_size: 224" in printed and "chinese_clip" in printed
    assert os.listdir(elsewhere) == []  # --help, --version and --print_config write nothing
