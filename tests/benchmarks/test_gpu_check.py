"""benchmarks/gpu_check.py: its dry run (every part's set-up on the CPU) and the JSON it reports.

The real check needs a CUDA machine; the dry run is what keeps the script itself working in CI.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

PARTS = ("train_fp16", "train_bf16", "resume", "nccl", "paper_arch", "extract_autocast", "compat_frame_fp16",
         "search", "jpeg")
# Parts whose set-up runs fully on the CPU: the dry run must report them "ok".
CPU_CAPABLE = ("train_fp16", "train_bf16", "resume", "nccl", "paper_arch", "extract_autocast", "search")
STATUSES = {"ok", "skipped", "failed"}
DRY_RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, str(SCRIPT), "--dry_run", "--out", str(out)], capture_output=True,
                               text=True, timeout=DRY_RUN_TIMEOUT_S, cwd=REPO, env=env)
    return completed, out


def test_dry_run_exits_0_and_prints_the_json_it_writes(dry_run):
    completed, out = dry_run
    assert completed.returncode == 0, completed.stderr[-4000:]
    printed = json.loads(completed.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text(encoding="utf-8"))
    assert printed["schema"] == gpu_check.SCHEMA and printed["dry_run"] is True and printed["device"] == "cpu"
    assert {"torch", "transformers", "faiss", "gpu_name"} <= set(printed["env"])


def test_every_part_is_reported_with_a_valid_status(dry_run):
    result = json.loads(dry_run[1].read_text(encoding="utf-8"))
    assert tuple(result["parts"]) == PARTS == gpu_check.PART_NAMES
    for name, part in result["parts"].items():
        assert part["status"] in STATUSES, name
        assert isinstance(part["seconds"], (int, float)), name
        if part["status"] == "skipped":
            assert isinstance(part["reason"], str) and part["reason"] and "\n" not in part["reason"], name
        if part["status"] == "failed":
            assert isinstance(part["error"], str) and part["error"], name
    counts = {status: sum(part["status"] == status for part in result["parts"].values()) for status in STATUSES}
    assert result["summary"] == counts


def test_cpu_capable_parts_are_ok_and_gpu_only_ones_skipped(dry_run):
    parts = json.loads(dry_run[1].read_text(encoding="utf-8"))["parts"]
    failed = {name: part.get("error") for name, part in parts.items() if part["status"] == "failed"}
    assert not failed
    for name in CPU_CAPABLE:
        assert parts[name]["status"] == "ok", (name, parts[name])
    fixture_present = (Path(gpu_check.DEFAULT_FIXTURE) / "checkpoint.pth.tar").is_file()
    assert parts["compat_frame_fp16"]["status"] == ("ok" if fixture_present else "skipped")
    assert parts["jpeg"]["status"] == "skipped"   # GPU decoding needs CUDA


def test_dry_run_figures_are_the_cpu_ones(dry_run):
    parts = json.loads(dry_run[1].read_text(encoding="utf-8"))["parts"]
    for name in ("train_fp16", "train_bf16"):
        assert parts[name]["amp_active"] is False and parts[name]["loss_finite"] is True
        assert parts[name]["steps"] == gpu_check.DRY_SIZES["train"]["steps"]
    assert parts["resume"]["bitwise_equal"] is True and parts["resume"]["tolerance_holds"] == 0.0
    assert parts["resume"]["resumed_from_step"] == gpu_check.DRY_SIZES["resume"]["save_at"]
    assert parts["nccl"]["backend"] == "gloo" and parts["nccl"]["world_size"] == 2
    assert parts["nccl"]["max_abs_loss_diff"] <= 1e-5
    assert set(parts["paper_arch"]["modes"]) == {"fp16", "fp16_checkpointing", "bf16"}
    assert all(mode["loss_finite"] for mode in parts["paper_arch"]["modes"].values())
    assert parts["search"]["check"]["ids_equal_up_to_ties"] is True
    assert parts["extract_autocast"]["fp16_max_abs_diff"] == 0.0   # no autocast off CUDA


def test_a_failing_part_is_reported_and_does_not_hide_the_others(tmp_path, monkeypatch, capsys):
    def broken(ctx):
        raise ValueError("boom\nsecond line")

    def timed_out(ctx):
        raise gpu_check.PartTimeout("ran past its hard limit of 1 s")

    def fine(ctx):
        return {"answer": float("inf")}

    monkeypatch.setitem(gpu_check.PARTS, "search", (broken, "search"))
    monkeypatch.setitem(gpu_check.PARTS, "jpeg", (timed_out, "jpeg"))
    monkeypatch.setitem(gpu_check.PARTS, "nccl", (fine, "nccl"))
    out = tmp_path / "result.json"
    code = gpu_check.main(["--dry_run", "--only", "nccl,search,jpeg", "--out", str(out)])
    assert code == 1
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    parts = result["parts"]
    assert parts["search"]["status"] == "failed" and parts["search"]["error"] == "ValueError: boom second line"
    assert parts["jpeg"]["status"] == "failed" and "PartTimeout" in parts["jpeg"]["error"]
    assert parts["nccl"] == {"status": "ok", "answer": "inf", "seconds": parts["nccl"]["seconds"]}
    assert parts["train_fp16"] == {"status": "skipped", "reason": "not selected (--only)", "seconds": 0.0}
    assert result["summary"] == {"ok": 1, "skipped": 6, "failed": 2}


def test_helpers():
    assert gpu_check.tolerance_holding(0.0) == 0.0
    assert gpu_check.tolerance_holding(3e-6) == 1e-5
    assert gpu_check.tolerance_holding(1.0) is None
    assert gpu_check.finite_or_str({"a": [math.nan, -math.inf, 1.5]}) == {"a": ["nan", "-inf", 1.5]}
    # PyYAML reads "1e-12" as a string; the mapping given on the command line must keep it a float.
    from real20m.config import yaml_value
    assert yaml_value(gpu_check.yaml_mapping({"eps": 1e-12, "n": 3}))["eps"] == 1e-12
