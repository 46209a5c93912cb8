"""The original release's own legacy feature files, and ours read by the original's way of reading them.

Uses ``../shared/fixtures/upstream_pipeline_tiny`` next to the repository checkout: its
``features_*.feat`` were written by the original ``main_cross_domain_emb.py --evaluate``.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from real20m.evaluate.feature_io import load_features, write_legacy_features

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO.parent / "shared" / "fixtures" / "upstream_pipeline_tiny"
ORIGINAL_FILES = ("features_goods.feat", "features_videos.feat")
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"fixture folder {FIXTURE} is absent "
                                "(it lives in ../shared next to the repository checkout)")


def _lines_by_pid(path):
    """pid -> the values text of its line, as the release's search scripts split a line."""
    return {int(pid): values for pid, values in (line.split("\t") for line in path.read_text().splitlines())}


@pytest.mark.parametrize("name", ORIGINAL_FILES)
def test_original_feature_file_loads_as_the_json_reader_of_the_original_reads_it(name):
    loaded = load_features(str(FIXTURE / name))
    by_pid = _lines_by_pid(FIXTURE / name)
    assert sorted(loaded.ids.tolist()) == sorted(by_pid) and loaded.dim == 512
    for pid, row in zip(loaded.ids.tolist(), loaded.feats):
        assert np.array_equal(row, np.array(json.loads("[" + by_pid[pid] + "]"), np.float32))


@pytest.mark.parametrize("name", ORIGINAL_FILES)
def test_our_writer_reproduces_the_original_lines(tmp_path, name):
    original = load_features(str(FIXTURE / name))
    ours_path = tmp_path / name
    write_legacy_features(str(ours_path), original.ids, original.feats)
    ours = load_features(str(ours_path))
    assert np.array_equal(ours.ids, original.ids)
    assert np.array_equal(ours.feats.view(np.uint32), original.feats.view(np.uint32))
    original_lines, our_lines = _lines_by_pid(FIXTURE / name), _lines_by_pid(ours_path)
    for pid, values in our_lines.items():
        parsed = json.loads("[" + values + "]")   # how the release's 1-convert_feat.py reads a line
        assert np.array_equal(np.array(parsed, np.float32), ours.feats[ours.ids.tolist().index(pid)])
        assert values == original_lines[pid]       # the original wrote str(float(v)): same text
