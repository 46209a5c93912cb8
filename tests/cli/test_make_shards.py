"""real20m-make-shards: the command line (conversion, --verify, one-line errors)."""
import os

import pytest

from real20m.cli.make_shards import main
from tests.conftest import synthetic_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory, "shard_cli_data", seed=1, num_queries=2, num_test_queries=1,
                             num_val_queries=0, goods_per_query=1, videos_per_query=1, frames_per_video=2, image_size=16)


def run(capsys, *argv):
    """(exit status, stdout, stderr) of the command."""
    try:
        status = main(list(argv))
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_convert_then_verify(data_root, tmp_path, capsys):
    out = str(tmp_path / "shards")
    status, printed, _ = run(capsys, "--data_root", data_root, "--out", out, "--shard_image_size", "8")
    assert status == 0
    assert "3 goods and 3 videos" in printed and "2 shards written, 0 kept; 0 problems" in printed
    assert sorted(os.listdir(out)) == ["goods-000000.tar", "goods-index.jsonl", "manifest.json", "skipped.tsv",
                                       "video-000000.tar", "video-index.jsonl"]
    assert run(capsys, "--out", out, "--verify")[:2] == (0, f"2 shards in {out} match the manifest\n")


def test_verify_names_a_shard_with_a_flipped_byte(data_root, tmp_path, capsys):
    out = tmp_path / "shards"
    run(capsys, "--data_root", data_root, "--out", str(out))
    shard = out / "video-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x01
    shard.write_bytes(bytes(data))
    status, _, error = run(capsys, "--out", str(out), "--verify")
    assert status == 2
    assert error == f"error: {shard}: sha256 differs from the manifest's\n"


@pytest.mark.parametrize("layout", ["missing", "not_the_layout"])
def test_a_bad_data_root_is_one_line_naming_it(tmp_path, capsys, layout):
    root = tmp_path / "Dataset"
    if layout == "not_the_layout":
        (root / "Real400K").mkdir(parents=True)
    out = tmp_path / "shards"
    status, _, error = run(capsys, "--data_root", str(root), "--out", str(out))
    assert status == 2
    assert error.startswith(f"error: {root}: ") and error.count("\n") == 1
    assert not out.exists()  # nothing written


def test_an_option_out_of_range_is_one_line(data_root, tmp_path, capsys):
    status, _, error = run(capsys, "--data_root", data_root, "--out", str(tmp_path / "s"), "--jpeg_quality", "0")
    assert (status, error) == (2, "error: --jpeg_quality must be 1..95, got 0\n")
