"""real20m.datasets.shards: the dataset written once as WebDataset tar shards."""
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from real20m.datasets.shards import ShardSettings, make_shards, verify_shards
from real20m.datasets.shards.samples import ImageSettings, encode_image, reduction_for
from tests.conftest import synthetic_dataset

ITEM_FILES = ("train_file/train_items.txt", "test_file/video_queries.txt", "test_file/goods_gallery.txt",
              "val_file/video_queries.txt", "val_file/goods_gallery.txt")


class Interrupted(Exception):
    """Stands for a run killed between two shards."""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """10 goods and 10 videos of 3 frames, 32 px square."""
    return synthetic_dataset(tmp_path_factory, "shard_data", num_queries=3, num_test_queries=1, num_val_queries=1,
                             goods_per_query=2, videos_per_query=2, frames_per_video=3, image_size=32)


@pytest.fixture(scope="module")
def shards(data_root, tmp_path_factory):
    """The dataset at short side 16, 4 items a shard."""
    out = str(tmp_path_factory.mktemp("shards16"))
    summary = make_shards(ShardSettings(data_root, out, shard_image_size=16, items_per_shard=4))
    return out, summary


def copy_of(data_root, tmp_path):
    return shutil.copytree(data_root, tmp_path / "data")


def referenced(data_root):
    """source -> pids, read from the annotation files with plain string splits."""
    pids = {"goods": set(), "video": set()}
    with open(os.path.join(data_root, "train_file", "train.txt"), encoding="utf-8") as handle:
        for line in handle:
            _, goods, videos = line.rstrip("\n").split("\t")[:3]
            pids["goods"].update(int(pid) for pid in goods.split(",") if pid != "None")
            pids["video"].update(int(pid) for pid in videos.split(",") if pid != "None")
    for name in ITEM_FILES:
        with open(os.path.join(data_root, name), encoding="utf-8") as handle:
            for line in handle:
                pid, source = line.split("\t")[:2]
                pids["goods" if source == "goods" else "video"].add(int(pid))
    return pids


def index(out, source):
    with open(os.path.join(out, f"{source}-index.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def tar_members(out):
    """(shard name, member name) -> bytes, read with tarfile by name."""
    members = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(out, name)) as archive:
                for member in archive.getmembers():
                    members[name, member.name] = archive.extractfile(member).read()
    return members


def description(members, shard, pid):
    return json.loads(members[shard, f"{pid}.json"])


def shard_files(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}


def test_every_referenced_item_is_stored_once_in_pid_order(data_root, shards):
    out, summary = shards
    members = tar_members(out)
    expected = referenced(data_root)
    for source in ("goods", "video"):
        entries = index(out, source)
        pids = [entry["pid"] for entry in entries]
        assert pids == sorted(expected[source])  # each once, sorted by pid
        keys = {member.split(".")[0] for shard, member in members if shard.startswith(source)}
        assert keys == {str(pid) for pid in pids}
        assert summary.manifest["sources"][source]["samples"] == len(pids) == 10
    assert sorted(name for name in os.listdir(out) if name.endswith(".tar")) == \
        [f"{source}-{number:06d}.tar" for source in ("goods", "video") for number in range(3)]
    assert (summary.written, summary.kept, summary.skipped) == (6, 0, 0)


def test_a_video_holds_cover_every_frame_text_and_description(data_root, shards):
    out, _ = shards
    members = tar_members(out)
    entry = index(out, "video")[0]
    pid, shard = entry["pid"], entry["shard"]
    assert sorted(entry["members"]) == ["0.jpg", "1.jpg", "2.jpg", "jpg", "json"]
    meta = description(members, shard, pid)
    folder = f"Real400K/video/images/{pid % 50000}"
    assert meta["frames"] == [f"{folder}/{pid}_{k}.jpg" for k in range(3)]
    assert meta["image"] == f"{folder}/{pid}.jpg"
    with open(os.path.join(data_root, meta["text_file"]), encoding="utf-8") as handle:
        assert meta["text"] == handle.read().splitlines()
    assert meta["original_sizes"]["0.jpg"] == [32, 32] and meta["sizes"]["0.jpg"] == [16, 16]


def test_images_are_resized_to_the_short_side_never_upscaled(data_root, tmp_path):
    root = copy_of(data_root, tmp_path)
    wide = root / "Real400K" / "goods" / "images" / "0" / "50000.jpg"
    Image.new("RGB", (40, 24), (200, 30, 30)).save(wide, format="JPEG")
    out = str(tmp_path / "shards")
    make_shards(ShardSettings(str(root), out, shard_image_size=16, items_per_shard=100))
    members = tar_members(out)
    sizes = {member: Image.open(io.BytesIO(data)).size for (_, member), data in members.items()
             if member.endswith("jpg")}
    assert sizes["50000.jpg"] == (27, 16)  # 40 x 24 -> short side 16: width 40 * 16 / 24 = 26.7
    assert all(min(size) == 16 for size in sizes.values())

    larger = str(tmp_path / "larger")
    make_shards(ShardSettings(str(root), larger, shard_image_size=64, items_per_shard=100))
    stored = tar_members(larger)
    for (shard, member), data in stored.items():
        if member.endswith(".jpg") and member.count(".") == 1:  # <pid>.jpg: a goods image or a cover
            meta = description(stored, shard, int(member.split(".")[0]))
            assert data == (root / meta["image"]).read_bytes()  # 32 px < 64: the file's bytes, not upscaled


def test_size_zero_stores_the_original_bytes(data_root, tmp_path):
    out = str(tmp_path / "shards")
    make_shards(ShardSettings(data_root, out, shard_image_size=0, items_per_shard=4))
    members = tar_members(out)
    checked = 0
    for source in ("goods", "video"):
        for entry in index(out, source):
            meta = description(members, entry["shard"], entry["pid"])
            files = {"jpg": meta["image"], **{f"{k}.jpg": path for k, path in enumerate(meta["frames"])}}
            for member, path in files.items():
                with open(os.path.join(data_root, path), "rb") as handle:
                    assert members[entry["shard"], f"{entry['pid']}.{member}"] == handle.read()
                checked += 1
    assert checked == 10 + 10 * 4


def test_index_offsets_give_each_members_bytes(shards):
    out, _ = shards
    members = tar_members(out)
    for source in ("goods", "video"):
        for entry in index(out, source):
            with open(os.path.join(out, entry["shard"]), "rb") as handle:
                for member, (offset, size) in entry["members"].items():
                    handle.seek(offset)
                    assert handle.read(size) == members[entry["shard"], f"{entry['pid']}.{member}"]


def test_rerun_redoes_exactly_a_torn_shard(data_root, shards, tmp_path):
    first, _ = shards
    out = shutil.copytree(first, tmp_path / "out")
    torn = out / "video-000001.tar"
    torn.write_bytes(torn.read_bytes()[:3000])
    summary = make_shards(ShardSettings(data_root, str(out), shard_image_size=16, items_per_shard=4))
    assert (summary.written, summary.kept) == (1, 5)
    assert shard_files(str(out)) == shard_files(first)
    assert verify_shards(str(out)) == 6


def test_an_interrupted_run_keeps_its_finished_shards(data_root, shards, tmp_path):
    out = str(tmp_path / "out")
    settings = ShardSettings(data_root, out, shard_image_size=16, items_per_shard=4)

    finished = []

    def stop_after_two(result):
        finished.append(result)
        if len(finished) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        make_shards(settings, on_shard=stop_after_two)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    summary = make_shards(settings)
    assert (summary.written, summary.kept) == (4, 2)
    assert shard_files(out) == shard_files(shards[0])


def test_changed_settings_rewrite_every_shard(data_root, shards, tmp_path):
    out = shutil.copytree(shards[0], tmp_path / "out")
    summary = make_shards(ShardSettings(data_root, str(out), shard_image_size=16, jpeg_quality=50,
                                        items_per_shard=4))
    assert (summary.written, summary.kept) == (6, 0)


def test_corrupt_image_missing_frame_and_missing_text_are_listed_and_the_run_goes_on(data_root, tmp_path):
    root = copy_of(data_root, tmp_path)
    (root / "Real400K" / "goods" / "images" / "1" / "50001.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    os.remove(root / "Real400K" / "video" / "images" / "0" / "1000000_1.jpg")
    os.remove(root / "Real400K" / "goods" / "text" / "2" / "50002.txt")
    out = tmp_path / "shards"
    summary = make_shards(ShardSettings(str(root), str(out), shard_image_size=16, items_per_shard=4))

    rows = (out / "skipped.tsv").read_text(encoding="utf-8").splitlines()
    assert rows == ["source\tpid\tpath\treason",
                    "goods\t50001\tReal400K/goods/images/1/50001.jpg\tcorrupt_image",
                    "goods\t50001\tReal400K/goods/images/1/50001.jpg\tno_readable_image",
                    "goods\t50002\tReal400K/goods/text/2/50002.txt\tmissing_text",
                    "video\t1000000\tReal400K/video/images/0/1000000_1.jpg\tmissing_frame"]
    assert summary.skipped == 4
    goods = {entry["pid"]: entry for entry in index(str(out), "goods")}
    assert 50001 not in goods
    assert description(tar_members(str(out)), goods[50002]["shard"], 50002)["text"] == []  # kept, without text
    video = index(str(out), "video")[0]
    assert video["pid"] == 1000000 and sorted(video["members"]) == ["0.jpg", "1.jpg", "jpg", "json"]
    meta = description(tar_members(str(out)), video["shard"], 1000000)
    assert meta["frames"] == ["Real400K/video/images/0/1000000_0.jpg", "Real400K/video/images/0/1000000_2.jpg"]
    assert summary.manifest["sources"]["goods"]["samples"] == 9


def test_two_workers_write_the_same_bytes_as_one(data_root, shards, tmp_path):
    out = str(tmp_path / "two")
    make_shards(ShardSettings(data_root, out, shard_image_size=16, items_per_shard=4, workers=2))
    assert shard_files(out) == shard_files(shards[0])


def test_a_large_jpeg_is_decoded_reduced_and_resized_like_a_full_decode(tmp_path):
    rows, cols = np.mgrid[0:120, 0:200]
    pixels = np.stack([rows * 2, cols, (rows + cols) % 256], axis=-1).astype(np.uint8)  # smooth gradients
    path = tmp_path / "large.jpg"
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    assert reduction_for(32)(200, 120) == 2  # 120 / 2 = 60 >= 32 > 120 / 4

    encoded = encode_image(str(path), ImageSettings(short_side=32, quality=95))
    assert encoded.original_size == (200, 120) and encoded.size == (53, 32)  # 200 * 32 / 120 = 53.3
    stored = np.asarray(Image.open(io.BytesIO(encoded.data)).convert("RGB"), dtype=np.float64)
    reference = np.asarray(Image.open(path).convert("RGB").resize((53, 32), Image.Resampling.LANCZOS),
                           dtype=np.float64)
    assert np.abs(stored - reference).mean() < 3
