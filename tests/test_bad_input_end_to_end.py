"""Bad input through the real entry points (the unit tests in tests/datasets and tests/evaluate
cover each parser on its own).

* a training run on a dataset with corrupt, empty and missing images and broken text files
  finishes and logs every counted problem at the end of the epoch;
* feature extraction of a gallery with unreadable images still writes a feature for every pid;
* report.html shows titles holding <script>, quotes and & as text;
* neither training nor evaluation writes anything outside the chosen output folder;
* malformed annotation / feature files stop the run with one line naming the file and line.
"""
import json
import logging
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from real20m.config import parse_config
from real20m.datasets.synthetic import generate
from real20m.engine.trainer import Trainer
from real20m.evaluate.feature_io import load_features, write_legacy_features
from real20m.utils.distributed import DistEnv

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
NASTY = """<script>alert('x')</script> "Tom" & 'Jerry'"""


def visible_text(page: str) -> str:
    """The text a browser shows for ``page`` (entities decoded, markup dropped)."""
    chunks = []
    parser = HTMLParser(convert_charrefs=True)
    parser.handle_data = chunks.append
    parser.feed(page)
    return "".join(chunks)


def run(script, *args, cwd, expect=0):
    result = subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                            timeout=TIMEOUT_S, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def tiny_args(data_root, output_dir, *extra):
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--data_root", str(data_root),
            "--output_dir", str(output_dir), "--image_size", "32", "--vocab_size", "300", *extra]


def replace_query_column(path: Path, pid: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        fields = line.split("\t")
        if fields[0] == str(pid):
            fields[2] = text
            lines[index] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A synthetic dataset with one problem of each kind; returns (data root, {kind: [paths]})."""
    root = tmp_path_factory.mktemp("bad_input") / "data"
    generate(str(root), seed=0, num_queries=16, num_test_queries=4, goods_per_query=2, videos_per_query=2,
             frames_per_video=5, image_size=32)
    goods_images, goods_text = root / "Real400K/goods/images", root / "Real400K/goods/text"
    video_images, video_text = root / "Real400K/video/images", root / "Real400K/video/text"
    truncated_jpeg, empty_jpeg = goods_images / "0/50000.jpg", goods_images / "1/50001.jpg"
    truncated_frame, missing_frame = video_images / "0/1000000_1.jpg", video_images / "1/1000001_2.jpg"
    truncated_jpeg.write_bytes(truncated_jpeg.read_bytes()[:100])
    empty_jpeg.write_bytes(b"")
    truncated_frame.write_bytes(truncated_frame.read_bytes()[:100])
    missing_frame.unlink()
    missing_text, latin1_text = goods_text / "2/50002.txt", video_text / "2/1000002.txt"
    missing_text.unlink()
    latin1_text.write_bytes("café crème\ntitre\ncorps\n".encode("latin-1"))
    (goods_text / "3/50003.txt").write_text("50003\ncat\nbrand\nnull\n\ndescription\n", encoding="utf-8")  # empty title
    (goods_text / "4/50004.txt").write_text(f"50004\ncat\nbrand\nnull\n{NASTY}\nd\n", encoding="utf-8")
    (video_text / "32/1000032.txt").write_text(f"{NASTY}\n{NASTY}\n{NASTY}\n", encoding="utf-8")

    # Evaluation: two unreadable gallery images, and data-controlled text shown in report.html.
    (goods_images / "32/50032.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (goods_images / "33/50033.jpg").write_bytes(b"")
    replace_query_column(root / "test_file/video_queries.txt", 1000032, NASTY)
    replace_query_column(root / "test_file/goods_gallery.txt", 50032, NASTY)
    issues = {"corrupt_image": [truncated_jpeg, empty_jpeg, truncated_frame, missing_frame],
              "missing_text": [missing_text], "non_utf8": [latin1_text]}
    return root, issues


def test_train_and_evaluate_on_damaged_data(damaged, tmp_path):
    data_root, issues = damaged
    out = tmp_path / "out"
    data_before, cwd_before = snapshot(data_root), set(os.listdir(tmp_path))

    # One whole epoch of the item file: every item is loaded once, so every problem is met.
    run("main_cross_domain_emb.py", *tiny_args(data_root, out, "--train_file",
                                               str(data_root / "train_file/train_items.txt"),
                                               "--batch_size", "8", "--workers", "2", "--epochs", "1"),
        cwd=tmp_path)
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert "training finished after 8 steps" in log
    for kind, paths in issues.items():
        line = next((line for line in log.splitlines() if f" x {kind}, e.g. " in line), None)
        assert line is not None and "epoch 0: " in line, f"no {kind} line in the log"
        assert int(line.split("epoch 0: ")[1].split(" x ")[0]) == len(paths)  # seeded: exact
        for path in paths:
            assert str(path) in line, (kind, path)
    assert "x replaced_item" in log  # goods whose only image is unreadable are swapped for another item

    checkpoint = out / "checkpoints" / "last.pth.tar"
    test_files = data_root / "test_file"
    eval_dir = out / "eval" / "video2goods"
    for name, items in (("query", "video_queries.txt"), ("gallery", "goods_gallery.txt")):
        run("main_cross_domain_emb.py", *tiny_args(data_root, eval_dir / name, "--evaluate", "--resume",
                                                   str(checkpoint), "--test_file", str(test_files / items),
                                                   "--batch_size", "4", "--workers", "0"), cwd=tmp_path)
    gallery_pids = [int(line.split("\t")[0]) for line in (test_files / "goods_gallery.txt").read_text().splitlines()]
    assert sorted(load_features(str(eval_dir / "gallery")).ids.tolist()) == sorted(gallery_pids)
    assert "'blank_frames': 2" in (eval_dir / "gallery" / "log.txt").read_text(encoding="utf-8")

    run("evaluation.py", "--query_features", str(eval_dir / "query"), "--gallery_features",
        str(eval_dir / "gallery"), "--gt_file", str(test_files / "eval_gt_video2goods.txt"), "--output_dir",
        str(eval_dir), "--task", "video2goods", "--report", "--quiet", "--topk", "10",
        "--query_file", str(test_files / "video_queries.txt"), "--gallery_file", str(test_files / "goods_gallery.txt"),
        "--goods_img_root", str(data_root / "Real400K/goods/images"),
        "--photo_img_root", str(data_root / "Real400K/video/images"), cwd=tmp_path)
    report = (eval_dir / "report.html").read_text(encoding="utf-8")
    text = visible_text(report)
    # The query's title comes from its text file (title|text|caption) and shows as text.
    assert f"query 1000032: {NASTY}|{NASTY[:40]}"[:80] in text
    assert "<script>" not in report and "alert('x')" not in report
    assert json.loads((eval_dir / "metrics.json").read_text())["num_queries"] == 8

    assert snapshot(data_root) == data_before, "the data folder was modified"
    assert set(os.listdir(tmp_path)) == cwd_before | {"out"}, "files appeared outside the output folder"


def test_a_run_stopped_by_max_steps_still_reports_the_issues_it_met(damaged, tmp_path, caplog):
    data_root, issues = damaged
    cfg = parse_config(tiny_args(data_root, tmp_path / "out", "--train_file",
                                 str(data_root / "train_file/train_items.txt"), "--batch_size", "8",
                                 "--workers", "0", "--max_steps", "3"))
    single_cpu = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, backend=None)
    trainer = Trainer(cfg, single_cpu)
    met = []
    train_step = trainer.train_step

    def recording_step(batch):
        met.extend(kind for kind, _ in batch["issues"])
        return train_step(batch)
    trainer.train_step = recording_step
    with caplog.at_level(logging.WARNING, logger="real20m"):
        logging.getLogger("real20m").addHandler(caplog.handler)
        try:
            trainer.fit()
        finally:
            logging.getLogger("real20m").removeHandler(caplog.handler)
    assert trainer.global_step == 3 and met, "the first 3 batches of this seed meet some damaged items"
    reported = {}
    for record in caplog.records:
        match = re.match(r"epoch 0: (\d+) x (\w+), e\.g\. ", record.getMessage())
        if match:
            reported[match.group(2)] = int(match.group(1))
    assert reported == {kind: met.count(kind) for kind in set(met)}


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("bad_line, file_name, reason", [
    ("only two\tfields", "train.txt", "expected 3 tab-separated fields, got 2"),
    ("q\t1,x2\tNone", "train.txt", "invalid id list"),
    ("q\tNone\tNone", "train.txt", "both id lists are None"),
    ("50001\tgoods\tq\t../../../../etc/passwd\tNone", "items.txt", "escapes"),
], ids=["too_few_fields", "bad_id", "none_both_sides", "path_escapes_root"])
def test_malformed_train_file_stops_with_one_line_naming_file_and_line(damaged, tmp_path, bad_line, file_name,
                                                                       reason):
    data_root, _ = damaged
    good = "red dress\t50005\t1000005" if file_name == "train.txt" else "50005\tgoods\tq\t5/50005.jpg\tNone"
    train_file = write_lines(tmp_path / file_name, good, good, bad_line, good)
    result = run("main_cross_domain_emb.py", *tiny_args(data_root, tmp_path / "out", "--train_file", str(train_file),
                                                        "--workers", "0"), cwd=tmp_path, expect=2)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {train_file}:3: ")
    assert reason in result.stderr


@pytest.mark.parametrize("content, message", [
    ("", "no annotation lines"),
    ("50032\tgoods\tq\tNone\tNone\n50034\tgoods\tq\tNone\tNone\n50032\tgoods\tq\tNone\tNone\n",
     "pid 50032 is listed twice (items 1 and 3)"),
], ids=["empty", "duplicate_pids"])
def test_bad_test_file_stops_feature_extraction_before_any_work(damaged, tmp_path, content, message):
    data_root, _ = damaged
    test_file = tmp_path / "gallery.txt"
    test_file.write_text(content, encoding="utf-8")
    result = run("main_cross_domain_emb.py", *tiny_args(data_root, tmp_path / "out", "--evaluate", "--resume", "init",
                                                        "--test_file", str(test_file)), cwd=tmp_path, expect=2)
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {test_file}: {message}")
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*.npy"))


def evaluation_args(tmp_path, query_feats, gallery_feats, gt_lines):
    write_lines(tmp_path / "gt.txt", *gt_lines)
    return ["--query_features", str(query_feats), "--gallery_features", str(gallery_feats),
            "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(tmp_path / "eval"), "--quiet", "--topk", "5"]


def unit_rows(n, dim, seed=0):
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("damage, message", [
    ("truncate_last_line", "gallery.feat:4: line is truncated"),
    ("wrong_dimension", "gallery.feat: features of dimension 6, but the queries"),
    ("duplicate_pids", "gallery.feat:4: pid 12 also on line 3 with a different vector"),
], ids=["truncated_last_line", "wrong_dimension", "duplicate_pids"])
def test_bad_feature_file_stops_evaluation_with_a_clear_message(tmp_path, damage, message):
    write_legacy_features(str(tmp_path / "query.feat"), np.array([1, 2]), unit_rows(2, 8))
    gallery_dim = 6 if damage == "wrong_dimension" else 8
    gallery_pids = np.array([10, 11, 12, 12]) if damage == "duplicate_pids" else np.arange(10, 14)
    write_legacy_features(str(tmp_path / "gallery.feat"), gallery_pids, unit_rows(4, gallery_dim, seed=1))
    if damage == "truncate_last_line":
        data = (tmp_path / "gallery.feat").read_bytes()
        (tmp_path / "gallery.feat").write_bytes(data[:-25])
    args = evaluation_args(tmp_path, tmp_path / "query.feat", tmp_path / "gallery.feat",
                           ["video/images/1/1_0.jpg\tgoods/images/10/10.jpg"])
    result = run("evaluation.py", *args, cwd=tmp_path, expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_gt_ids_missing_from_the_gallery_are_counted_not_fatal(tmp_path):
    feats = unit_rows(6, 8)
    write_legacy_features(str(tmp_path / "query.feat"), np.array([1, 2]), feats[:2])
    write_legacy_features(str(tmp_path / "gallery.feat"), np.array([10, 11, 12, 13]), feats[2:])
    args = evaluation_args(tmp_path, tmp_path / "query.feat", tmp_path / "gallery.feat",
                           ["video/images/1/1_0.jpg\tgoods/images/10/10.jpg,goods/images/99/99.jpg",
                            "video/images/2/2_0.jpg\tgoods/images/98/98.jpg"])
    run("evaluation.py", *args, cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["gt_docs_missing_from_gallery"] == 2 and metrics["num_queries"] == 2
    assert metrics["recall@1"] <= 0.25  # the missing documents stay in the denominators
