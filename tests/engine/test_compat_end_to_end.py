"""``main_cross_domain_emb.py --evaluate`` on the release fixture's raw files equals the original.

The reference (``../shared/fixtures/upstream_pipeline_tiny``) holds the item embeddings the
original release's own code computed from the same raw files with the release-layout checkpoint
``upstream_ckpt_tiny``; the stage-by-stage inputs are checked in tests/datasets/test_compat_pipeline.py.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL
import pytest

from real20m.evaluate.feature_io import load_features

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
PIPELINE, CHECKPOINT = FIXTURES / "upstream_pipeline_tiny", FIXTURES / "upstream_ckpt_tiny"
TOLERANCE = 1e-5  # the fixture README's bound for an independent re-derivation of the model

pytestmark = pytest.mark.skipif(not (PIPELINE / "reference.npz").exists() or not CHECKPOINT.exists(),
                                reason=f"release fixtures not found under {FIXTURES} (they sit next to the checkout)")


def evaluate(test_file: str, out: Path) -> subprocess.CompletedProcess:
    """The original's evaluation flags, as the fixture was produced (batch size 1, the checkpoint's 32 px);
    no --compat: a release-layout checkpoint selects compat mode by itself."""
    roots = PIPELINE / "Real400K"
    command = [sys.executable, str(REPO / "main_cross_domain_emb.py"), "--embedding_size", "512", "--clip_length", "5",
               "--finetune", "--image_size", "32", "--batch_size", "1", "--workers", "0", "--evaluate",
               "--resume", str(CHECKPOINT / "checkpoint.pth.tar"), "--release_config", str(CHECKPOINT / "config.json"),
               "--test_file", str(PIPELINE / "test_file" / test_file), "--output_dir", str(out),
               "--goods_img_root", str(roots / "goods" / "images"), "--goods_text_root", str(roots / "goods" / "text"),
               "--photo_img_root", str(roots / "video" / "images"), "--photo_text_root", str(roots / "video" / "text"),
               "--legacy_text_features"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=out.parent)


def reference_embedding(arrays, pid: str) -> np.ndarray:
    """doc_emb as the original computes it under the installed Pillow (13 resizes a few images differently)."""
    variant = f"pillow13_doc_emb_{pid}"
    return arrays[variant] if PIL.__version__.startswith("13.") and variant in arrays.files else arrays[f"doc_emb_{pid}"]


@pytest.mark.parametrize("test_file", ["goods.txt", "videos.txt"])
def test_every_item_embeds_as_the_original_does(tmp_path, test_file):
    result = evaluate(test_file, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluating with --compat original" in result.stdout   # the run's log says which mode it chose
    features = load_features(str(tmp_path / "out"))
    with np.load(PIPELINE / "reference.npz") as arrays:
        for pid, vector in zip(features.ids.tolist(), np.asarray(features.feats)):
            difference = np.abs(vector - reference_embedding(arrays, str(pid))).max()
            assert difference <= TOLERANCE, (pid, difference)
    expected_pids = [line.split("\t")[0] for line in (PIPELINE / "test_file" / test_file).read_text().splitlines()]
    assert sorted(map(str, features.ids.tolist())) == sorted(expected_pids)

    # The legacy file: every line as the original's search scripts read it, and equal to the
    # original's own file wherever the installed Pillow decodes and resizes as its Pillow did.
    lines = (tmp_path / "out" / "features.feat").read_text().splitlines()
    ours = {line.split("\t")[0]: np.array(json.loads("[" + line.split("\t")[1] + "]")) for line in lines}
    original_file = PIPELINE / ("features_goods.feat" if test_file == "goods.txt" else "features_videos.feat")
    original = {line.split("\t")[0]: np.array(json.loads("[" + line.split("\t")[1] + "]"))
                for line in original_file.read_text().splitlines()}
    assert set(ours) == set(original)
    items = {item["pid"]: item for item in json.loads((PIPELINE / "reference.json").read_text())["items"]}
    for pid, vector in ours.items():
        affected = PIL.__version__.startswith("13.") and items[pid]["pillow13"]["doc_emb_max_abs_diff"] > 0
        if not affected:
            assert np.abs(vector - original[pid]).max() <= TOLERANCE, pid


def test_a_title_longer_than_the_text_positions_fails_with_one_clear_line(tmp_path):
    result = evaluate("goods_long_title.txt", tmp_path / "out")
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pid 612345678: its title has 90 tokens but the text tower has 64 positions"), last
    assert "Traceback" not in result.stderr
