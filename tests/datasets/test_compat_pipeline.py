"""``compat="original"`` against what the original release's evaluation computed from raw files.

Every item of ``../shared/fixtures/upstream_pipeline_tiny`` (next to the checkout): the exact text
string, the token ids with the shipped vocabulary, the frames used and the pixels after the model's
normalisation, bit for bit. The rules themselves are tested on synthetic files in
``test_compat_rules.py``.
"""
import json
import os
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch

from real20m.datasets.annotations import SOURCES, load_items
from real20m.datasets.items import ItemLoader, ItemRoots
from real20m.datasets.transforms import build_eval_transform

from .test_compat_rules import model_normalisation

# Located as the other release-fixture tests do (tests/models/conftest.py, tests/engine/test_inference.py).
FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "upstream_pipeline_tiny"
REFERENCE = FIXTURE / "reference.json"

pytestmark = pytest.mark.skipif(
    not REFERENCE.exists(), reason=f"release pipeline fixture not found at {FIXTURE} (it sits next to the checkout)")


def reference() -> dict:
    return json.loads(REFERENCE.read_text(encoding="utf-8")) if REFERENCE.exists() else {"items": []}


REF = reference()
ITEMS = {item["pid"]: item for item in REF["items"]}


@pytest.fixture(scope="module")
def arrays():
    with np.load(FIXTURE / "reference.npz") as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def loader():
    roots = REF["roots"]
    item_roots = ItemRoots(*(str(FIXTURE / roots[name]) for name in
                             ("goods_img_root", "goods_text_root", "photo_img_root", "photo_text_root")))
    return ItemLoader(item_roots, build_eval_transform(REF["image_size"], "original"),
                      clip_length=REF["clip_length"], text_aug=False, compat="original")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from real20m.assets import CHINESE_BERT_VOCAB_DIR

    return AutoTokenizer.from_pretrained(CHINESE_BERT_VOCAB_DIR)


@pytest.fixture(scope="module")
def test_file_rows():
    """pid -> (source code, frame paths, text path), read as the project reads test files."""
    rows = {}
    for relative in REF["test_files"].values():
        table = load_items(FIXTURE / relative)
        for row in range(len(table)):
            _, frame_paths, text_path = table.fields(row)
            rows[str(table.pids[row])] = (int(table.sources[row]), frame_paths, text_path)
    return rows


def load(loader, rows, pid):
    source, frame_paths, text_path = rows[pid]
    return loader.load(int(pid), source, frame_paths=frame_paths, text_path=text_path)


def reference_pixels(arrays, item) -> np.ndarray:
    """The original's pixels under the installed Pillow: 13.x resizes some sizes one level apart."""
    names = item["npz"]
    if PIL.__version__.startswith("13"):
        return arrays[names.get("pillow13_pixels", names["pixels"])]
    return arrays[names["pixels"]]


def test_every_test_file_item_is_in_the_reference(test_file_rows):
    assert sorted(test_file_rows) == sorted(ITEMS)


@pytest.mark.parametrize("pid", sorted(ITEMS))
def test_text_is_the_original_string(loader, test_file_rows, pid):
    assert load(loader, test_file_rows, pid)["title"] == ITEMS[pid]["text"]


@pytest.mark.parametrize("pid", sorted(ITEMS))
def test_token_ids_with_the_shipped_vocabulary(tokenizer, test_file_rows, loader, arrays, pid):
    text = load(loader, test_file_rows, pid)["title"]
    ids = tokenizer([text], padding=True, truncation=True, max_length=REF["title_max_length"])["input_ids"][0]
    assert ids == ITEMS[pid]["title_ids"] == arrays[ITEMS[pid]["npz"]["title_ids"]].tolist()


@pytest.mark.parametrize("pid", sorted(ITEMS))
def test_frames_used_are_the_original_choice(loader, test_file_rows, pid):
    source, frame_paths, _ = test_file_rows[pid]
    clip = loader.clip_frames(int(pid), source, frame_paths=frame_paths)
    image_root = loader.roots.image_root(source)
    used = [Path(os.path.relpath(path, image_root)).as_posix() for path, _ in clip]
    assert used == ITEMS[pid]["frames"]["used"]


@pytest.mark.parametrize("pid", sorted(ITEMS))
def test_pixels_after_model_normalisation_are_bit_exact(loader, test_file_rows, arrays, pid):
    sample = load(loader, test_file_rows, pid)
    assert sample["source"] == ITEMS[pid]["source"] and sample["source"] in SOURCES
    assert sample["frames"].dtype == torch.uint8
    pixels = model_normalisation(sample["frames"]).numpy()
    expected = reference_pixels(arrays, ITEMS[pid])
    assert pixels.shape == expected.shape == tuple(ITEMS[pid]["pixels_shape"])
    assert pixels.dtype == expected.dtype == np.float32
    assert np.array_equal(pixels, expected), f"max |diff| {np.abs(pixels - expected).max()}"


def test_a_missing_chosen_frame_is_reported(loader, test_file_rows):
    # 89031337 lists _3, which the original tries and skips; the issue names the file.
    missing = [item for item in ITEMS.values() if item["frames"].get("missing_files")]
    assert missing, "the fixture is expected to hold an item with a missing frame"
    for item in missing:
        sample = load(loader, test_file_rows, item["pid"])
        reported = {Path(path).name for kind, path in sample["issues"] if kind == "corrupt_image"}
        assert reported == {Path(name).name for name in item["frames"]["missing_files"]}
