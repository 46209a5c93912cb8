"""Every entry point, run as a user runs it, turns a missing input into one line naming it (exit 2)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_shell_entry_points import run_script

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent-real20m-input"


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The run's stderr, which must be exactly one line starting with ``error:``; exit status 2."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("script", ["video2goods_evaluate.sh", "goods2video_evaluate.sh", "query2goods_evaluate.sh",
                                    "query2video_evaluate.sh"])
def test_a_missing_data_root_stops_each_task_script_with_one_line(tmp_path, script):
    done = run_script(script, {"DATA_ROOT": MISSING, "OUTPUT_DIR": str(tmp_path / "out"), "CKPT": "init"},
                      cwd=tmp_path)
    assert one_error_line(done).startswith(f"error: {MISSING}: no such file or folder (DATA_ROOT)")
    assert not (tmp_path / "out").exists()


def test_a_missing_query_file_is_named_with_its_variable(tiny_data_root, tmp_path):
    done = run_script("video2goods_evaluate.sh", {"DATA_ROOT": tiny_data_root, "QUERY_FILE": MISSING,
                                                  "OUTPUT_DIR": str(tmp_path / "out"), "CKPT": "init"}, cwd=tmp_path)
    assert one_error_line(done).startswith(f"error: {MISSING}: no such file or folder (QUERY_FILE)")


def test_a_missing_config_file_stops_train_sh_with_one_line(tiny_data_root, tmp_path):
    done = run_script("train.sh", {"DATA_ROOT": tiny_data_root, "OUTPUT_DIR": str(tmp_path / "out"),
                                   "CONFIG": "nosuch.yaml"}, cwd=tmp_path)
    assert one_error_line(done) == ("error: nosuch.yaml: no such config file (give a YAML file, or a packaged "
                                    "config: paper, tiny)")


@pytest.mark.parametrize("module, args, named", [
    ("real20m.cli.train", ["--config", "tiny", "--data_root", MISSING], f"{MISSING}/train_file/train.txt"),
    ("real20m.cli.train", ["--config", "broken.yaml"], "broken.yaml: line 2: not valid YAML"),
    ("real20m.evaluate", ["--query_features", MISSING, "--gallery_features", MISSING, "--gt_file", MISSING,
                          "--output_dir", "out"], MISSING),
    ("real20m.cli.convert", [f"{MISSING}.pth.tar", "converted"], f"{MISSING}.pth.tar"),
    ("real20m.models.convert", ["--check", MISSING], f"{MISSING}/config.json"),
    ("real20m.cli.extract_frames", ["--videos", MISSING, "--out", "frames"], MISSING),
    ("real20m.search_cli", ["--checkpoint", f"{MISSING}.pth.tar", "--gallery", MISSING, "--query", "红色"], MISSING),
    ("real20m.serve", ["--checkpoint", f"{MISSING}.pth.tar", "--gallery", MISSING], MISSING),
    ("real20m.cli.make_shards", ["--data_root", MISSING, "--out", "shards"], MISSING),
])
def test_each_python_entry_point_names_the_missing_input(tmp_path, module, args, named):
    (tmp_path / "broken.yaml").write_text("data: [1,\n")
    line = one_error_line(run_module(module, *args, cwd=tmp_path))
    assert named in line


def test_make_synthetic_into_an_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_error_line(run_module("real20m.datasets.synthetic", "--out", str(blocker / "Dataset"), cwd=tmp_path))
    assert str(blocker) in line
