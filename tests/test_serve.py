"""The search app (real20m.serve) around a fake retriever: JSON shape, image-path refusal, bad queries, escaping."""
import os
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from real20m.retrieval import QueryError, SearchRules  # noqa: E402
from real20m.serve import build_parser, create_app, gallery_size  # noqa: E402

HOSTILE = "<script>alert(1)</script>"


@dataclass(frozen=True)
class FakeHit:
    pid: int
    score: float
    source: str | None
    title: str | None
    image_path: str | None


class FakeRetriever:
    """Scores every gallery item by how many query words its title shares; records its calls."""

    def __init__(self, items):
        self.items = items          # [(pid, source, title, image_path)]
        self.calls = []

    def search(self, queries, k=10):
        self.calls.append((list(queries), k))
        results = []
        for query in queries:
            words = set(query.lower().split())
            scored = [(len(words & set((title or "").lower().split())) + 1.0 / (1 + index), pid, source, title, image)
                      for index, (pid, source, title, image) in enumerate(self.items)]
            scored.sort(key=lambda row: -row[0])
            results.append([FakeHit(pid, float(score), source, title, image)
                            for score, pid, source, title, image in scored[:k]])
        return results

    def __len__(self):
        return len(self.items)


def _jpeg(path, colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (16, 12), colour).save(path)
    return path


@pytest.fixture()
def setup(tmp_path):
    goods = tmp_path / "goods" / "images"
    photo = tmp_path / "photo" / "images"
    red = _jpeg(str(goods / "1" / "101.jpg"))
    video = _jpeg(str(photo / "2" / "202_0.jpg"), (10, 10, 200))
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    secret = _jpeg(str(secret_dir / "secret.jpg"), (0, 0, 0))
    (secret_dir / "passwd").write_text("root:x:0:0\n")
    os.symlink(secret, goods / "1" / "escape.jpg")                   # a link out of the root
    os.symlink(str(secret_dir), goods / "linkdir")                    # a folder link out of the root
    os.symlink(red, goods / "1" / "inside_link.jpg")                  # a link that stays inside
    (goods / "1" / "notes.txt").write_text("not an image\n")
    items = [
        (101, "goods", "red summer dress", red),
        (202, "photo", "summer dress try-on video", video),
        (303, "goods", HOSTILE, "1/101.jpg"),                        # relative to the goods root
        (404, "goods", None, None),
        (505, "goods", "outside image", secret),                      # never gets an image URL
    ]
    retriever = FakeRetriever(items)
    app = create_app(retriever, [str(goods), str(photo)], max_query_chars=50, k=3)
    return TestClient(app), retriever, {"goods": goods, "photo": photo, "secret": secret, "red": red}


def test_api_search_shape_and_values(setup):
    client, retriever, paths = setup
    response = client.get("/api/search", params={"q": "  red dress ", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"query", "results"}
    assert body["query"] == "red dress"                              # stripped
    assert retriever.calls == [(["red dress"], 5)]
    results = body["results"]
    assert [row["pid"] for row in results] == [101, 202, 303, 404, 505]
    for row in results:
        assert set(row) == {"pid", "score", "source", "title", "image"}
        assert isinstance(row["pid"], int) and isinstance(row["score"], float)
    assert results[0]["score"] == pytest.approx(3.0) and results[0]["source"] == "goods"
    assert results[0]["title"] == "red summer dress"
    assert results[1]["source"] == "photo"
    assert results[2]["title"] == HOSTILE                            # JSON carries the raw text
    assert results[3]["title"] is None and results[3]["image"] is None
    assert results[4]["image"] is None                               # outside the roots: no URL at all
    image_url = results[0]["image"]
    assert urlparse(image_url).path == "/image"
    assert parse_qs(urlparse(image_url).query)["path"] == [paths["red"]]
    fetched = client.get(image_url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    assert fetched.content == open(paths["red"], "rb").read()
    assert client.get(results[1]["image"]).status_code == 200
    assert client.get(results[2]["image"]).content == fetched.content   # relative path, resolved in a root


def test_api_search_default_k(setup):
    client, retriever, _ = setup
    assert len(client.get("/api/search?q=dress").json()["results"]) == 3
    assert retriever.calls[-1][1] == 3


@pytest.mark.parametrize("query", ["", "   ", "\t\n", "x" * 51])
def test_bad_queries_are_400_with_a_message(setup, query):
    client, retriever, _ = setup
    response = client.get("/api/search", params={"q": query})
    assert response.status_code == 400
    message = response.json()["message"]
    assert ("empty query" in message) if query.strip() == "" else ("too long" in message and "50" in message)
    page = client.get("/", params={"q": query})
    assert page.status_code == 400
    assert 'id="message"' in page.text
    assert ("empty query" if query.strip() == "" else "query too long") in page.text
    assert retriever.calls == []                                      # never reached the model


def refusal(check, value) -> str:
    with pytest.raises(QueryError) as refused:
        check(value)
    return str(refused.value)


@pytest.mark.parametrize("query", ["", " \t ", "长" * 201])
def test_page_and_api_refuse_a_query_with_the_search_rules_message(query):
    """The defaults are real20m-search's and Retriever.search's: the same rule, the same message."""
    retriever = FakeRetriever([(1, "goods", "a", None)])
    client = TestClient(create_app(retriever, []))
    message = refusal(SearchRules().query, query)
    response = client.get("/api/search", params={"q": query})
    assert response.status_code == 400 and response.json()["message"] == message
    page = client.get("/", params={"q": query})
    assert page.status_code == 400 and message in page.text
    assert retriever.calls == []


def test_page_k_follows_the_search_rules_with_the_page_limit():
    client = TestClient(create_app(FakeRetriever([]), [], k=5, max_k=40))
    for k in (0, 41):
        response = client.get("/api/search", params={"q": "dress", "k": str(k)})
        assert response.status_code == 400
        assert response.json()["message"] == refusal(SearchRules(max_k=40).k, k)
    assert client.get("/api/search", params={"q": "dress", "k": "40"}).status_code == 200


def test_missing_query_and_bad_k(setup):
    client, retriever, _ = setup
    response = client.get("/api/search")
    assert response.status_code == 400 and "empty query" in response.json()["message"]
    for k in ("0", "-1", "abc", "101", "1e3"):
        response = client.get("/api/search", params={"q": "dress", "k": k})
        assert response.status_code == 400, k
        assert "k must be" in response.json()["message"]
    assert client.get("/api/search", params={"q": "x" * 50}).status_code == 200   # the limit itself is fine
    assert retriever.calls == [(["x" * 50], 3)]


def test_page_without_query_shows_the_box(setup):
    client, retriever, _ = setup
    page = client.get("/")
    assert page.status_code == 200
    assert '<input type="search" name="q"' in page.text and 'maxlength="50"' in page.text
    assert 'id="results"' not in page.text and retriever.calls == []
    assert "script-src" not in page.headers["content-security-policy"]   # default-src 'none': no script at all
    assert "default-src 'none'" in page.headers["content-security-policy"]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.titles, self._in_title = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_title = tag == "div" and ("class", "title") in attrs

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.titles.append(data)


def test_page_escapes_hostile_titles_and_queries(setup):
    client, _, _ = setup
    query = "dress <img src=x onerror=alert(2)>"
    page = client.get("/", params={"q": query, "k": 5})
    assert page.status_code == 200
    html = page.text
    assert HOSTILE not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    parsed = _Tags()
    parsed.feed(html)
    assert "script" not in parsed.tags
    assert parsed.tags.count("img") == 3                              # 101, 202, 303 have servable images
    assert parsed.titles == ["red summer dress", "summer dress try-on video", HOSTILE, "(no title)", "outside image"]
    assert query in "".join(parsed.text)                              # shown verbatim, as text


@pytest.mark.parametrize("name", ["escape.jpg", "../../private/secret.jpg", "1/../../../private/secret.jpg",
                                  "linkdir/secret.jpg", "linkdir/passwd"])
def test_image_refuses_paths_leaving_the_roots(setup, name):
    client, _, paths = setup
    relative = name if name.startswith(("..", "linkdir")) else "1/" + name
    for path in (relative, os.path.join(str(paths["goods"]), relative)):
        response = client.get("/image", params={"path": path})
        assert response.status_code in (403, 404), path
        assert response.headers["content-type"].startswith("application/json")
        assert b"root:x" not in response.content and response.content[:2] != b"\xff\xd8"


def test_image_refuses_absolute_paths_outside(setup):
    client, _, paths = setup
    for path in (paths["secret"], "/etc/passwd", "/", str(paths["goods"].parent.parent / "private" / "passwd")):
        assert client.get("/image", params={"path": path}).status_code == 403, path
    for path in ("", "1/missing.jpg", "1/notes.txt", "1", "1/101.jpg\x00.png"):
        assert client.get("/image", params={"path": path}).status_code == 404, path
    assert client.get("/image?path=%2e%2e%2f%2e%2e%2fprivate%2fsecret.jpg").status_code == 403
    assert client.get("/image", params={"path": "1/inside_link.jpg"}).status_code == 200


def test_image_with_no_roots_serves_nothing(tmp_path):
    image = _jpeg(str(tmp_path / "a.jpg"))
    client = TestClient(create_app(FakeRetriever([(1, "goods", "a", image)]), []))
    assert client.get("/image", params={"path": image}).status_code == 403
    assert client.get("/api/search?q=a").json()["results"][0]["image"] is None


def test_retriever_errors_are_not_500_for_value_errors(tmp_path):
    class Refusing(FakeRetriever):
        def search(self, queries, k=10):
            raise ValueError("no token of this query is in the vocabulary")

    class Broken(FakeRetriever):
        def search(self, queries, k=10):
            raise RuntimeError("index lost")

    client = TestClient(create_app(Refusing([]), []))
    response = client.get("/api/search?q=zzz")
    assert response.status_code == 400 and "vocabulary" in response.json()["message"]
    assert client.get("/?q=zzz").status_code == 400
    client = TestClient(create_app(Broken([]), []), raise_server_exceptions=False)
    response = client.get("/api/search?q=zzz")
    assert response.status_code == 500 and "index lost" not in response.text
    assert response.json()["message"]


def test_non_finite_scores_become_null():
    client = TestClient(create_app(FakeRetriever([]), []))
    client.app.state.retriever.search = lambda queries, k=10: [[FakeHit(7, float("nan"), None, "t", None)]]
    row = client.get("/api/search?q=t").json()["results"][0]
    assert row == {"pid": 7, "score": None, "source": None, "title": "t", "image": None}
    assert "score <span class=\"score\">?</span>" in client.get("/?q=t").text


def test_app_factory_and_cli_defaults():
    with pytest.raises(ValueError):
        create_app(FakeRetriever([]), [], k=0)
    args = build_parser().parse_args(["--checkpoint", "c", "--gallery", "g"])
    assert (args.host, args.port, args.k, args.max_query_chars, args.device) == ("127.0.0.1", 8000, 20, 200, "cpu")
    assert gallery_size(FakeRetriever([(1, None, None, None)] * 4)) == 4


# ------------------------------------------------------------------ the real command line, end to end
#
# real20m-serve (python -m real20m.serve) in a subprocess around the real Retriever: the untrained
# model of configs/tiny.yaml (CKPT=init), the gallery features --evaluate writes for a synthetic
# gallery, and one gallery title rewritten to a script tag.

REAL_HOSTILE_PID = 50034
SERVE_FLAGS = ["--config", "tiny", "--image_size", "32", "--vocab_size", "300"]


@pytest.fixture(scope="module")
def real_gallery(tmp_path_factory):
    """{data_root, features, items}: a synthetic dataset, its goods gallery's untrained-model features,
    and pid 50034's title replaced by HOSTILE."""
    from real20m.cli.train import run as train_main
    from real20m.datasets.synthetic import generate
    folder = tmp_path_factory.mktemp("serve_real")
    data_root, features = str(folder / "data"), str(folder / "gallery_features")
    generate(data_root, seed=0, num_queries=16, num_test_queries=4, goods_per_query=2, videos_per_query=2,
             frames_per_video=5, image_size=32)
    items = os.path.join(data_root, "test_file", "goods_gallery.txt")
    train_main(["--evaluate", "--resume", "init", "--data_root", data_root, "--test_file", items,
                "--output_dir", features, "--batch_size", "4", "--workers", "0", *SERVE_FLAGS])
    text = os.path.join(data_root, "Real400K", "goods", "text", "34", f"{REAL_HOSTILE_PID}.txt")
    lines = open(text, encoding="utf-8").read().splitlines()
    lines[4] = HOSTILE                                   # goods text: itemid, category, brand, entity, TITLE, ...
    with open(text, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    pids = [int(line.split("\t")[0]) for line in open(items, encoding="utf-8") if line.strip()]
    return {"data_root": data_root, "features": features, "items": items, "pids": pids}


class CliServer:
    """``python -m real20m.serve ... --port 0`` in a subprocess; ``url`` once it logged 'ready at'."""

    def __init__(self, gallery, *extra):
        import queue
        import subprocess
        import sys
        import threading
        command = [sys.executable, "-m", "real20m.serve", "--checkpoint", "init", "--data_root", gallery["data_root"],
                   "--gallery", gallery["features"], "--items", gallery["items"], "--port", "0", *SERVE_FLAGS,
                   *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.lines, self._queue = [], queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_ready(timeout=180)

    def _pump(self):
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _wait_ready(self, timeout):
        import queue
        import re
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            match = re.search(r"ready at (http://127\.0\.0\.1:\d+)$", line)
            if match:
                return match.group(1)
        self.stop()
        raise AssertionError("real20m-serve did not get ready:\n" + "\n".join(self.lines[-40:]))

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except Exception:   # noqa: BLE001
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def real_server(real_gallery):
    server = CliServer(real_gallery)
    yield server, real_gallery
    server.stop()


@pytest.mark.slow
def test_cli_serves_the_real_retriever(real_server):
    import httpx
    server, gallery = real_server
    log = "\n".join(server.lines)
    steps = [log.find(step) for step in ("loading checkpoint init", "loading gallery " + gallery["features"],
                                         f"loaded gallery: {len(gallery['pids'])} items", "ready at http://127.0.0.1:")]
    assert -1 not in steps and steps == sorted(steps), log
    with httpx.Client(base_url=server.url, timeout=30) as client:
        body = client.get("/api/search", params={"q": "黑色格子皮革背包", "k": 50}).json()
        assert body["query"] == "黑色格子皮革背包"
        results = body["results"]
        assert sorted(row["pid"] for row in results) == sorted(gallery["pids"])   # the whole (tiny) gallery
        scores = [row["score"] for row in results]
        assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
        assert {row["source"] for row in results} == {"goods"}
        by_pid = {row["pid"]: row for row in results}
        assert by_pid[REAL_HOSTILE_PID]["title"] == HOSTILE
        assert all(row["title"] for row in results)
        for row in results:
            image = client.get(row["image"])
            assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert len(client.get("/api/search", params={"q": "背包", "k": 3}).json()["results"]) == 3
        assert client.get("/api/search", params={"q": " "}).status_code == 400
        assert client.get("/api/search", params={"q": "长" * 201}).status_code == 400
        assert client.get("/image", params={"path": gallery["items"]}).status_code == 403
        assert client.get("/image", params={"path": "../../../test_file/goods_gallery.txt"}).status_code in (403, 404)
        page = client.get("/", params={"q": "背包"})
        assert page.status_code == 200 and HOSTILE not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_cli_refuses_missing_files_before_loading(tmp_path, capsys):
    from real20m.serve import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "missing.pth.tar"), "--gallery", str(tmp_path)])
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err


def test_bench_serve_small_run_reports_zero_errors(capsys):
    import json
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import bench_serve
    result = bench_serve.main(["--requests", "24", "--concurrency", "4", "--gallery_size", "500", "--dim", "16",
                               "--k", "5"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result and last["errors"] == 0 and last["requests"] == 24
    assert last["requests_per_s"] > 0 and 0 < last["p50_ms"] <= last["p99_ms"]
