"""A small fuzz sample: mutated images, texts, frame lists and checkpoints are read, counted or
refused, never a traceback or a hang."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_small_fuzz_sample_has_no_traceback_and_no_hang():
    command = [sys.executable, str(REPO / "benchmarks" / "fuzz_inputs.py"), "--images", "40", "--texts", "12",
               "--frame_lists", "10", "--checkpoints", "10", "--seed", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tracebacks"] == 0 and report["hangs"] == 0, result.stdout
    for kind, total in (("images", 40), ("texts", 12), ("frame_lists", 10), ("checkpoints", 10)):
        assert sum(report[kind].values()) == total
    assert report["images"]["counted"] >= 30  # 6 of the 8 image mutations cannot be decoded
    assert report["checkpoints"]["refused"] >= 6
