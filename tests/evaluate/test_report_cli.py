import json
import os

import numpy as np
import pytest
from PIL import Image

from real20m.evaluate.cli import build_parser, request_from_args, run_evaluation
from real20m.evaluate.feature_io import write_legacy_features
from real20m.evaluate.metrics import RetrievalScores
from real20m.evaluate.item_lookup import ItemView
from real20m.evaluate.report import FoundItems, plot_recall, write_report

NASTY = 'Tom & "Jerry" <script>alert(1)</script>'


def test_report_escapes_titles_and_embeds_thumbnails(tmp_path):
    image = tmp_path / "img.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(image)

    def lookup(pid):
        return ItemView(pid, "goods", f"{NASTY} #{pid}", (str(image),))

    metrics = RetrievalScores({"recall": {1: 0.5}, "hit": {1: 0.5}, "map": {1: 0.25}}, {"num_queries": 2})
    found = FoundItems([1, 2], np.array([[5, 6, 7], [6, 5, -1]]), {1: [6], 2: [9]}, metrics)
    path = write_report(str(tmp_path), "video2goods <b>", found, lookup)
    text = open(path, encoding="utf-8").read()
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Tom &amp; &#34;Jerry&#34;" in text
    assert "video2goods &lt;b&gt;" in text
    assert text.count("data:image/jpeg;base64,") == 2 + 2 + 5   # query frames + GT panels + 5 results
    assert text.count('class="item hit"') == 1 and "&#10003;" in text
    assert str(tmp_path) not in text                      # nothing links outside the report
    assert "<th>K</th><th>Recall@K</th><th>hit@K</th><th>mAP@K</th>" in text
    assert "<tr><td>1</td><td>0.5000</td><td>0.5000</td><td>0.2500</td></tr>" in text and "num_queries: 2" in text


def test_text_queries_are_shown_as_their_escaped_text_without_frames(tmp_path):
    image = tmp_path / "img.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(image)
    asked = []

    def lookup(pid):
        asked.append(pid)
        return ItemView(pid, "goods", f"item #{pid}", (str(image),))

    metrics = RetrievalScores({"recall": {1: 0.5}, "hit": {1: 0.5}, "map": {1: 0.25}}, {"num_queries": 2})
    found = FoundItems([1, 2], np.array([[5, 6, 7], [6, 5, -1]]), {1: [6], 2: [9]}, metrics)
    path = write_report(str(tmp_path), "query2goods", found, lookup, query_texts={1: NASTY, 2: "蓝色连衣裙"})
    text = open(path, encoding="utf-8").read()
    assert "<script>" not in text
    assert "text query 1: Tom &amp; &#34;Jerry&#34; &lt;script&gt;alert(1)&lt;/script&gt;</h3>" in text
    assert "text query 2: 蓝色连衣裙</h3>" in text
    assert "query frames" not in text
    assert text.count("data:image/jpeg;base64,") == 2 + 5   # GT panels + 5 results: no query image
    assert 1 not in asked and 2 not in asked                # a text query is never looked up as an item


def test_plot_recall_writes_png(tmp_path):
    metrics = RetrievalScores({name: {k: k / 100 for k in (1, 10, 100)} for name in ("recall", "hit", "map")}, {})
    path = plot_recall(metrics, str(tmp_path / "recall.png"), "video2goods")
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
    metrics = run_evaluation(request_from_args(args))
    saved = json.load(open(out / "metrics.json"))
    assert saved["recall@1"] == metrics["recall@1"] >= 0.9
    assert saved["recall@50"] == 1.0 and "recall@100" not in saved
    assert saved["num_queries"] == 20 and saved["num_gallery"] == 300
    assert saved["search"]["index"] == "Flat" and "total_s" in saved["timings"]
    assert os.path.getsize(out / "recall.png") > 0


def _item_file_dataset(tmp_path, n_gallery=4):
    """Two video queries and a goods gallery with images and text files in the Real400K layout."""
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((2 + n_gallery, 4)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    gallery_pids = list(range(10, 10 + n_gallery))
    write_legacy_features(str(tmp_path / "q.feat"), [1, 2], feats[:2])
    write_legacy_features(str(tmp_path / "g.feat"), gallery_pids, feats[2:])
    (tmp_path / "gt.txt").write_text("video/images/1/1_0.jpg\tgoods/images/10/10.jpg\n"
                                     "video/images/2/2_0.jpg\tgoods/images/11/11.jpg,goods/images/12/12.jpg\n")
    for source, pid in (("video", 1), ("goods", 10)):
        folder = tmp_path / source / "images" / str(pid)
        folder.mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(folder / f"{pid}.jpg")
    video_text = {1: f"a caption\n{NASTY}\nnull\n", 2: "null\nsecond video title\nnull\n"}
    for pid, text in video_text.items():
        (tmp_path / "video" / "text" / str(pid)).mkdir(parents=True)
        (tmp_path / "video" / "text" / str(pid) / f"{pid}.txt").write_text(text)
    for pid in gallery_pids:
        (tmp_path / "goods" / "text" / str(pid)).mkdir(parents=True)
        (tmp_path / "goods" / "text" / str(pid) / f"{pid}.txt").write_text(
            f"{pid}\ncategory\nbrand\nentity\ngoods title {pid} & co\ndescription\n")
    (tmp_path / "queries.txt").write_text("1\tphoto\tsearch one\t1/1.jpg\tNone\n2\tphoto\tsearch two\t\tNone\n")
    (tmp_path / "gallery.txt").write_text("".join(f"{p}\tgoods\tquery of {p}\t\tNone\n" for p in gallery_pids))
    return feats


def _report_args(tmp_path, *extra):
    return build_parser().parse_args([
        "--query_features", str(tmp_path / "q.feat"), "--gallery_features", str(tmp_path / "g.feat"),
        "--gt_file", str(tmp_path / "gt.txt"), "--output_dir", str(tmp_path / "eval"), "--topk", "3", "--quiet",
        "--report", "--task", "video2goods", "--query_file", str(tmp_path / "queries.txt"),
        "--gallery_file", str(tmp_path / "gallery.txt"), "--goods_img_root", str(tmp_path / "goods" / "images"),
        "--photo_img_root", str(tmp_path / "video" / "images"), *extra])


def test_cli_report_shows_titles_from_text_files_scores_and_ground_truth(tmp_path):
    feats = _item_file_dataset(tmp_path)
    metrics = run_evaluation(request_from_args(_report_args(tmp_path)))
    text = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert metrics["num_queries"] == 2
    # The video title is title|text|caption of its text file (text is null), escaped.
    assert "query 1: Tom &amp; &#34;Jerry&#34; &lt;script&gt;alert(1)&lt;/script&gt;|a caption</h3>" in text
    assert "query 2: second video title</h3>" in text
    assert "<script>" not in text and "search one" not in text and "query of 10" not in text
    assert "goods title 10 &amp; co" in text
    assert "ground truth: 1 items" in text and "ground truth: 2 items" in text
    assert text.count('class="item gt"') == 3
    scores = feats[:2] @ feats[2:].T
    for row in range(2):
        for score in np.sort(scores[row])[::-1][:3]:
            assert f'<span class="score">{score:.4f}</span>' in text
    # query 1's frame, GT item 10 in its panel, and item 10 among the results of each query
    assert text.count("data:image/jpeg;base64,") == 1 + 1 + 2


def test_cli_report_all_queries_are_split_over_linked_pages(tmp_path, monkeypatch):
    from real20m.evaluate import report
    monkeypatch.setattr(report, "QUERIES_PER_PAGE", 1)
    _item_file_dataset(tmp_path)
    run_evaluation(request_from_args(_report_args(tmp_path, "--report_queries", "all")))
    out = tmp_path / "eval"
    index = (out / "report.html").read_text(encoding="utf-8")
    assert 'href="report_001.html"' in index and 'href="report_002.html"' in index
    assert "Recall@K" in index and "query 1:" not in index
    pages = [(out / f"report_00{n}.html").read_text(encoding="utf-8") for n in (1, 2)]
    assert "query 1:" in pages[0] and "query 2:" in pages[1] and "query 2:" not in pages[0]
    assert all('href="report.html"' in page for page in pages)
    assert not (out / "report_003.html").exists()


def test_report_queries_flag_accepts_a_count_or_all(tmp_path):
    _item_file_dataset(tmp_path)
    assert _report_args(tmp_path, "--report_queries", "all").report_queries is None
    assert _report_args(tmp_path, "--report_queries", "7").report_queries == 7
    with pytest.raises(SystemExit):
        _report_args(tmp_path, "--report_queries", "0")
