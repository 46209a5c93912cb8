"""A small, bounded load check of the search server's JSON endpoint over loopback.

    python benchmarks/bench_serve.py                          # fake retriever, 200 requests, 8 clients
    python benchmarks/bench_serve.py --requests 1000 --concurrency 16
    python benchmarks/bench_serve.py -- --checkpoint CKPT --gallery FEATS --items ITEMS [--data_root D ...]

The server runs in its own process (uvicorn, ``--port 0``) so the clients do not share its GIL.
By default it wraps a fake retriever: exact numpy inner-product search of a hashed query vector
over a random L2-normalised gallery (``--gallery_size`` x ``--dim``), which costs about what the
index part of a real search costs, without the model. Flags after ``--`` start the real
``python -m real20m.serve`` with them instead (model and index loaded once, as in use).
``--concurrency`` threads, one keep-alive httpx client each, send ``GET /api/search?q=...&k=...``
until ``--requests`` answers came back; a request is an error unless it is HTTP 200 with k results
(or the whole gallery, if smaller).
Prints one JSON object as the last line: requests_per_s, p50_ms, p99_ms, errors (exit status 1
unless errors is 0).
"""
import argparse
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import zlib

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


class NumpyRetriever:
    """Hashes a query to a random unit vector and searches a random gallery exactly."""

    def __init__(self, size, dim, seed=0):
        rng = np.random.default_rng(seed)
        feats = rng.standard_normal((size, dim), dtype=np.float32)
        self.feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        self.pids = np.arange(1_000_000, 1_000_000 + size, dtype=np.int64)
        self.gallery_size = size

    def search(self, queries, k=10):
        from real20m.retrieval import Hit   # the real result type (pure dataclass; no model is loaded)
        results = []
        for query in queries:
            rng = np.random.default_rng(zlib.crc32(query.encode("utf-8")))
            vector = rng.standard_normal(self.feats.shape[1], dtype=np.float32)
            scores = self.feats @ (vector / np.linalg.norm(vector))
            top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            results.append([Hit(int(self.pids[row]), float(scores[row]), "goods" if row % 2 else "photo",
                                f"item {int(self.pids[row])} <b>{query}</b>", None) for row in top])
        return results


def serve_fake(args):
    """Child process: the app around NumpyRetriever on 127.0.0.1:0; logs 'ready at ...'."""
    import logging
    from real20m.serve import create_app, make_server
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    app = create_app(NumpyRetriever(args.gallery_size, args.dim), [], k=args.k)
    make_server(app, "127.0.0.1", 0).run()


def start_server(args, serve_flags):
    if serve_flags:
        command = [sys.executable, "-m", "real20m.serve", *serve_flags, "--host", "127.0.0.1", "--port", "0"]
    else:
        command = [sys.executable, os.path.abspath(__file__), "--_child", "--gallery_size", str(args.gallery_size),
                   "--dim", str(args.dim), "--k", str(args.k)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                     daemon=True).start()
    seen, deadline = [], time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line.rstrip())
        match = re.search(r"ready at (http://127\.0\.0\.1:\d+)", line)
        if match:
            return process, match.group(1)
    process.kill()
    process.wait()
    sys.exit("the server did not start:\n" + "\n".join(seen[-30:]))


def run_load(url, requests, concurrency, k):
    import httpx
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))

    def client():
        with httpx.Client(base_url=url, timeout=60) as session:
            # connection + first search, not timed; its result count (k, or the whole gallery when smaller) is expected
            expected = len(session.get("/api/search", params={"q": "warm up", "k": k}).json()["results"])
            barrier.wait()
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.perf_counter()
                try:
                    response = session.get("/api/search", params={"q": f"query {index % 50} dress", "k": k})
                    ok = response.status_code == 200 and len(response.json()["results"]) == expected > 0
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except Exception as error:   # noqa: BLE001 - counted, reported
                    problem = repr(error)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, errors


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    serve_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--k", type=int, default=20, help="results per request")
    parser.add_argument("--gallery_size", type=int, default=20000, help="fake retriever's gallery rows")
    parser.add_argument("--dim", type=int, default=256, help="fake retriever's feature dimension")
    parser.add_argument("--start_timeout", type=float, default=300, help="seconds to wait for the server")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        return serve_fake(args)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    process, url = start_server(args, serve_flags)
    try:
        wall, latencies, errors = run_load(url, args.requests, args.concurrency, args.k)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    milliseconds = np.asarray(latencies) * 1000
    for problem in errors[:5]:
        print(f"error: {problem}", file=sys.stderr)
    retriever = ("real: python -m real20m.serve " + " ".join(serve_flags)) if serve_flags else \
        f"fake: exact numpy inner-product search over {args.gallery_size}x{args.dim}"
    result = {"bench": "serve", "endpoint": "/api/search", "retriever": retriever, "requests": len(latencies),
              "concurrency": args.concurrency, "k": args.k, "wall_s": round(wall, 3),
              "requests_per_s": round(len(latencies) / wall, 1),
              "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
              "p99_ms": round(float(np.percentile(milliseconds, 99)), 2), "errors": len(errors)}
    print(json.dumps(result))
    if errors:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
