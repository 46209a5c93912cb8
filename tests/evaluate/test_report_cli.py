import json
import os

import numpy as np
from PIL import Image

from real20m.evaluate.cli import build_parser, run_evaluation
from real20m.evaluate.feature_io import write_legacy_features
from real20m.evaluate.report import plot_recall, write_report

NASTY = 'Tom & "Jerry" <script>alert(1)</script>'


def test_report_escapes_titles_and_embeds_thumbnails(tmp_path):
    image = tmp_path / "img.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(image)

    def resolver(pid):
        return f"{NASTY} #{pid}", [str(image)]

    metrics = {"recall@1": 0.5, "hit@1": 0.5, "map@1": 0.5, "num_queries": 2}
    retrieved = np.array([[5, 6, 7], [6, 5, -1]])
    path = write_report(str(tmp_path), "video2goods <b>", [1, 2], retrieved, {1: [6], 2: [9]}, metrics, resolver)
    text = open(path, encoding="utf-8").read()
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Tom &amp; &quot;Jerry&quot;" in text
    assert "video2goods &lt;b&gt;" in text
    assert text.count("data:image/jpeg;base64,") == 2 + 5   # query frames + 5 results
    assert text.count('class="item hit"') == 1 and "&#10003;" in text
    assert str(tmp_path) not in text                      # nothing links outside the report


def test_plot_recall_writes_png(tmp_path):
    metrics = {f"{name}@{k}": k / 100 for name in ("recall", "hit", "map") for k in (1, 10, 100)}
    path = plot_recall(metrics, str(tmp_path / "recall.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_run_evaluation_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((300, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    gallery_ids = np.arange(300) + 5000
    queries = gallery[:20] + 0.01 * rng.standard_normal((20, 8)).astype(np.float32)
    write_legacy_features(str(tmp_path / "q.feat"), np.arange(20) + 100, queries)
    write_legacy_features(str(tmp_path / "g.feat"), gallery_ids, gallery)
    with open(tmp_path / "gt.txt", "w") as f:
        for i in range(20):
            f.write(f"video/images/1/{100 + i}_0.jpg\tgoods/images/2/{5000 + i}.jpg\n")
    out = tmp_path / "eval"
    args = build_parser().parse_args([
        "--query_features", str(tmp_path / "q.feat"), "--gallery_features", str(tmp_path / "g.feat"),
        "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(out), "--topk", "50", "--quiet"])
    metrics = run_evaluation(args)
    saved = json.load(open(out / "metrics.json"))
    assert saved["recall@1"] == metrics["recall@1"] >= 0.9
    assert saved["recall@50"] == 1.0 and "recall@100" not in saved
    assert saved["num_queries"] == 20 and saved["num_gallery"] == 300
    assert saved["search"]["index"] == "exact" and "total_s" in saved["timings"]
    assert os.path.getsize(out / "recall.png") > 0


def test_cli_report_from_item_files(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((6, 4)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    write_legacy_features(str(tmp_path / "q.feat"), [1, 2], feats[:2])
    write_legacy_features(str(tmp_path / "g.feat"), [10, 11, 12, 13], feats[2:])
    (tmp_path / "gt.txt").write_text("video/images/1/1_0.jpg\tgoods/images/10/10.jpg\n")
    for root, pid in (("photo", 1), ("goods", 10)):
        folder = tmp_path / root / str(pid)
        folder.mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(folder / f"{pid}.jpg")
    (tmp_path / "queries.txt").write_text(f"1\tphoto\t{NASTY}\t1/1.jpg\tNone\n2\tphoto\tq2\t\tNone\n")
    (tmp_path / "gallery.txt").write_text("".join(f"{p}\tgoods\tg{p} & co\t\tNone\n" for p in (10, 11, 12, 13)))
    out = tmp_path / "eval"
    args = build_parser().parse_args([
        "--query_features", str(tmp_path / "q.feat"), "--gallery_features", str(tmp_path / "g.feat"),
        "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(out), "--topk", "3", "--quiet", "--report",
        "--task", "video2goods", "--query_file", str(tmp_path / "queries.txt"),
        "--gallery_file", str(tmp_path / "gallery.txt"), "--goods_img_root", str(tmp_path / "goods"),
        "--photo_img_root", str(tmp_path / "photo")])
    metrics = run_evaluation(args)
    text = (out / "report.html").read_text(encoding="utf-8")
    assert metrics["num_queries"] == 1 and metrics["queries_without_gt"] == 1
    assert "query 1: photo 1: Tom &amp; &quot;Jerry&quot; &lt;script&gt;" in text
    assert "g10 &amp; co" in text and "<script>" not in text
    assert text.count("data:image/jpeg;base64,") == 2   # the query frame and gallery item 10 exist
