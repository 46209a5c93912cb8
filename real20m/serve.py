"""A local search page over a trained checkpoint: type a query, see the goods and micro-videos it finds.

    real20m-serve --checkpoint outputs/checkpoints/last.pth.tar --data_root Dataset \\
        --gallery GALLERY_FEATURES --items Dataset/test_file/goods_gallery.txt [--host 127.0.0.1 --port 8000]
    python -m real20m.serve ...   (same flags)

``--gallery`` is a feature folder (or ``.feat`` file) that ``--evaluate`` wrote for the item file
``--items``, or an index folder saved by ``evaluation.py --save_index``. Images and titles come from
``--data_root``'s layout or the explicit ``--goods_img_root/--photo_img_root`` (and text) roots.

The checkpoint and the gallery are loaded once, at start-up; then uvicorn serves, on 127.0.0.1
unless ``--host`` says otherwise:

* ``GET /``                 the page: a query box and a grid of results (thumbnail, title, score, source).
                            ``/?q=red+dress&k=20`` runs the search on the server and renders its grid,
                            so a result page is a plain link and the page needs no JavaScript.
* ``GET /api/search?q=&k=`` ``{"query": ..., "results": [{"pid", "score", "source", "title", "image"}]}``;
                            ``image`` is the ``/image`` URL of the thumbnail, or null.
* ``GET /image?path=``      an image file, served only from inside the configured image roots: the
                            real path (symlinks resolved) must lie under one of them, else 403.

An empty, blank or over-long query, or a bad ``k``, is HTTP 400 with ``{"message": ...}`` (the page
shows the message); it never reaches the model. The rules are ``real20m.retrieval.SearchRules``,
the ones ``real20m-search`` and ``Retriever.search`` apply, with the page's own limit on ``k``.
Every string on the page goes through Jinja2's autoescaping, and the page is sent with a
Content-Security-Policy that allows no script at all.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import mimetypes
import os
import sys
import threading
import time
from typing import Any, Sequence
from urllib.parse import quote, urlencode

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from real20m.retrieval import MAX_QUERY_CHARS, QueryError, Retriever, SearchRules
from real20m.utils.entry import INPUT_ERROR_STATUS, add_version_argument

LOGGER = logging.getLogger("real20m.serve")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DEFAULT_K = 20
DEFAULT_MAX_K = 100   # a page of thumbnails, not the deeper lists real20m-search may print
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                                "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% if query %}{{ query }} - {% endif %}real20m search</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
form { display: flex; gap: .5rem; margin-bottom: 1rem; }
input[type=search] { flex: 1; max-width: 40rem; font-size: 1.1rem; padding: .4rem; }
button { font-size: 1.1rem; padding: .4rem 1rem; }
.message { color: #a00; background: #fee; border: 1px solid #e99; padding: .5rem .8rem; max-width: 40rem; }
.summary { color: #555; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 1rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5rem; margin: 0; overflow-wrap: anywhere; }
.card img, .card .noimage { width: 100%; aspect-ratio: 1; object-fit: cover; background: #eee; display: block; }
.card .noimage { display: flex; align-items: center; justify-content: center; color: #888; }
.title { font-weight: 600; margin: .4rem 0 .2rem; }
.meta { color: #666; font-size: .85rem; }
.source { text-transform: uppercase; font-size: .75rem; letter-spacing: .05em; }
</style>
</head>
<body>
<h1>real20m search</h1>
<form method="get" action="/" role="search">
  <input type="search" name="q" value="{{ query }}" maxlength="{{ max_query_chars }}"
         placeholder="a search query, e.g. summer dress" aria-label="query" autofocus>
  <input type="hidden" name="k" value="{{ k }}">
  <button type="submit">Search</button>
</form>
{% if message %}<p class="message" id="message" role="alert">{{ message }}</p>{% endif %}
{% if results is not none %}
<p class="summary" id="summary">{{ results | length }} result{{ "" if results | length == 1 else "s" }} for
  <q>{{ query }}</q></p>
<div class="grid" id="results">
{% for hit in results %}
  <figure class="card" data-pid="{{ hit.pid }}">
    {% if hit.image %}<img src="{{ hit.image }}" alt="" loading="lazy">
    {%- else %}<div class="noimage">no image</div>{% endif %}
    <figcaption>
      <div class="title">{{ hit.title if hit.title is not none else "(no title)" }}</div>
      <div class="meta"><span class="source">{{ hit.source or "?" }}</span> &middot; pid {{ hit.pid }}
        &middot; score <span class="score">
          {{- "%.4f" | format(hit.score) if hit.score is not none else "?" -}}
        </span></div>
    </figcaption>
  </figure>
{% endfor %}
</div>
{% endif %}
</body>
</html>
"""


class ImageRoots:
    """The folders images may be served from, as real (symlink-free) absolute paths."""

    def __init__(self, roots: Sequence[str]):
        self.roots = []
        for root in roots:
            if root:
                real = os.path.realpath(root)
                if real not in self.roots:
                    self.roots.append(real)

    def _inside(self, real: str) -> bool:
        for root in self.roots:
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return True
        return False

    def resolve(self, path: str) -> tuple[int, str | None]:
        """(HTTP status, real path): 200 and the file, 403 outside every root, 404 missing / not an image."""
        if not self.roots:
            return 403, None
        if not path or "\x00" in path:
            return 404, None
        if os.path.isabs(path):
            candidates = [path]
        else:   # relative to a root (or to the working folder, as item files name them)
            candidates = [os.path.join(root, path) for root in self.roots] + [os.path.abspath(path)]
        status = 403
        for candidate in candidates:
            try:
                real = os.path.realpath(candidate)
            except (OSError, ValueError):
                continue
            if not self._inside(real):
                continue
            status = 404
            if real.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(real):
                return 200, real
        return status, None

    def url(self, path: str | None) -> str | None:
        """The ``/image`` URL of ``path``, or None when it would not be served."""
        if not path:
            return None
        status, _ = self.resolve(path)
        return "/image?" + urlencode({"path": path}, quote_via=quote) if status == 200 else None


def _parse_k(raw: str | None, default: int, rules: SearchRules) -> int:
    """The ``k`` parameter (``default`` when absent), checked by ``rules``."""
    if raw is None or raw.strip() == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise QueryError(f"k must be a whole number from 1 to {rules.max_k}, got {raw[:20]!r}") from None
    return rules.k(k)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def create_app(retriever, image_roots: list[str], max_query_chars: int = MAX_QUERY_CHARS,
               k: int = DEFAULT_K, max_k: int | None = None) -> FastAPI:
    """The search app around any object with ``search(list[str], k) -> list[list[Hit]]``.

    ``image_roots``: the only folders ``/image`` serves files from. ``k``: results per query by
    default; a request may ask for up to ``max_k`` (default: the larger of ``k`` and 100).
    """
    if k < 1 or max_query_chars < 1:
        raise ValueError("k and max_query_chars must be at least 1")
    rules = SearchRules(max_query_chars, max(k, DEFAULT_MAX_K) if max_k is None else max_k)
    roots = ImageRoots(image_roots)
    lock = threading.Lock()   # models and fast tokenizers are not safe to call from several threads at once
    page = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_PAGE)
    app = FastAPI(title="real20m search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.retriever, app.state.image_roots = retriever, roots

    def run_search(query: str, depth: int) -> list[dict]:
        with lock:
            hits = retriever.search([query], k=depth)[0]
        return [{"pid": int(hit.pid), "score": _finite(hit.score), "source": _text(hit.source),
                 "title": _text(hit.title), "image": roots.url(hit.image_path)} for hit in hits]

    def render(status: int, query: str = "", depth: int = k, message: str | None = None,
               results: list | None = None) -> HTMLResponse:
        html = page.render(query=query, k=depth, message=message, results=results,
                           max_query_chars=max_query_chars)
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        params = request.query_params
        raw_query = params.get("q")
        if raw_query is None:
            return render(200)
        shown = raw_query[:max_query_chars]
        try:
            query = rules.query(raw_query)
            depth = _parse_k(params.get("k"), k, rules)
        except QueryError as error:
            return render(400, shown, message=str(error))
        try:
            results = run_search(query, depth)
        except ValueError as error:
            return render(400, shown, depth, message=f"cannot search for this query: {error}")
        except Exception:   # noqa: BLE001 - the page says so; the log has the traceback
            LOGGER.exception("search failed for %r", query)
            return render(500, shown, depth, message="the search failed on the server; see its log")
        return render(200, query, depth, results=results)

    @app.get("/api/search")
    def api_search(request: Request):
        params = request.query_params
        try:
            query = rules.query(params.get("q"))
            depth = _parse_k(params.get("k"), k, rules)
        except QueryError as error:
            return JSONResponse({"error": "bad_request", "message": str(error)}, status_code=400)
        try:
            results = run_search(query, depth)
        except ValueError as error:
            return JSONResponse({"error": "bad_request", "message": f"cannot search for this query: {error}"},
                                status_code=400)
        except Exception:   # noqa: BLE001
            LOGGER.exception("search failed for %r", query)
            return JSONResponse({"error": "search_failed", "message": "the search failed on the server"},
                                status_code=500)
        return {"query": query, "results": results}

    @app.get("/image")
    def image(path: str = ""):
        status, real = roots.resolve(path)
        if status != 200:
            message = "not found" if status == 404 else "path outside the image roots"
            return JSONResponse({"error": "refused" if status == 403 else "not_found", "message": message},
                                status_code=status)
        media_type = mimetypes.guess_type(real)[0] or "application/octet-stream"
        return FileResponse(real, media_type=media_type,
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})

    return app


def gallery_size(retriever) -> int | None:
    """Number of gallery items the retriever holds, where it says."""
    for name in ("gallery_size", "num_items", "size"):
        value = getattr(retriever, name, None)
        value = value() if callable(value) else value
        if isinstance(value, int):
            return value
    for name in ("gallery_ids", "pids", "ids"):
        value = getattr(retriever, name, None)
        if value is not None and hasattr(value, "__len__"):
            return len(value)
    try:
        return len(retriever)
    except TypeError:
        return None


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "warning"):
    """A uvicorn server that logs ``ready at http://host:port`` once its socket listens (port 0: any free one).

    ``server.bound_port`` holds the real port after start-up; ``server.started`` says it is serving.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        bound_port: int | None = None

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            listening = [sock for server in getattr(self, "servers", []) for sock in server.sockets]
            self.bound_port = listening[0].getsockname()[1] if listening else port
            LOGGER.info("ready at http://%s:%d", _url_host(host), self.bound_port)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            server_header=False, lifespan="off")
    return _Server(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="real20m-serve", description="Serve a local search page over a checkpoint and a gallery. "
        "Other arguments are main_cross_domain_emb.py flags (--image_size, --compat, ...), as --evaluate reads them.")
    parser.add_argument("--checkpoint", required=True,
                        help="our .pth.tar, a release checkpoint, an exported folder, or 'init' (untrained)")
    parser.add_argument("--gallery", required=True,
                        help="gallery features written by --evaluate (folder or .feat file), or a saved index folder")
    parser.add_argument("--items", default=None, help="the gallery's one-item-a-line file (sources, titles, images)")
    parser.add_argument("--search_backend", default=None,
                        help="a registered search backend (default: exact, or the saved index's own)")
    parser.add_argument("--config", default=None,
                        help="YAML file or packaged name (tiny, paper); needed with --checkpoint init")
    parser.add_argument("--data_root", default=None, help="dataset root: default image and text roots")
    parser.add_argument("--goods_img_root", default=None, help="image root of goods items (thumbnails)")
    parser.add_argument("--photo_img_root", default=None, help="image root of videos (thumbnails)")
    parser.add_argument("--goods_text_root", default=None, help="text root of goods items (titles)")
    parser.add_argument("--photo_text_root", default=None, help="text root of videos (titles)")
    parser.add_argument("--device", default="cpu", help="torch device of the query encoder (default: cpu)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"results per query (default: {DEFAULT_K})")
    parser.add_argument("--max_query_chars", type=int, default=MAX_QUERY_CHARS,
                        help=f"longest query accepted, in characters (default: {MAX_QUERY_CHARS})")
    add_version_argument(parser)
    return parser


def _setup_logging() -> None:
    logger = logging.getLogger("real20m")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)


def load_retriever(args, config_args=()):
    """The Retriever of ``args`` with its gallery loaded, logging each step (torch is imported here,
    once the flags are known to be good)."""
    started = time.perf_counter()
    from real20m.config import command_line_options
    config, options = command_line_options(list(config_args))
    roots = {f"data.{name}": getattr(args, name) for name in ("goods_img_root", "photo_img_root", "goods_text_root",
                                                               "photo_text_root") if getattr(args, name)}
    LOGGER.info("loading checkpoint %s (device %s)", args.checkpoint, args.device)
    retriever = Retriever.from_checkpoint(args.checkpoint, config=args.config or config, data=args.data_root,
                                          options={**options, **roots}, device=args.device)
    LOGGER.info("loading gallery %s%s", args.gallery, f" with items {args.items}" if args.items else "")
    retriever.load_gallery(args.gallery, items=args.items, goods_img_root=args.goods_img_root,
                           photo_img_root=args.photo_img_root, goods_text_root=args.goods_text_root,
                           photo_text_root=args.photo_text_root, search_backend=args.search_backend)
    size = gallery_size(retriever)
    LOGGER.info("loaded gallery: %s items in %.1f s", size if size is not None else "?",
                time.perf_counter() - started)
    return retriever


def image_roots_of(args, retriever) -> list[str]:
    """The folders thumbnails are served from: the flags' image roots, else the configuration's."""
    data = getattr(getattr(retriever, "cfg", None), "data", None)
    roots = [args.goods_img_root or getattr(data, "goods_img_root", None),
             args.photo_img_root or getattr(data, "photo_img_root", None)]
    return [root for root in roots if root and os.path.isdir(root)]


def main(argv=None) -> None:
    parser = build_parser()
    args, config_args = parser.parse_known_args(argv)
    if args.k < 1 or args.max_query_chars < 1:
        parser.error("--k and --max_query_chars must be at least 1")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    for flag in ("checkpoint", "gallery", "items"):   # --config may be a packaged name (tiny, paper)
        value = getattr(args, flag)
        if value is not None and not (flag == "checkpoint" and value == "init") and not os.path.exists(value):
            print(f"error: --{flag} {value}: no such file or folder", file=sys.stderr)
            sys.exit(INPUT_ERROR_STATUS)
    _setup_logging()
    if not _is_loopback(args.host):
        LOGGER.warning("listening on %s: the search page and its images are reachable from other machines",
                       args.host)
    from real20m.utils.checkpoint_io import CheckpointError
    try:
        retriever = load_retriever(args, config_args)
    except (OSError, ValueError, CheckpointError) as error:   # a bad input file: one line, exit status 2
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    roots = image_roots_of(args, retriever)
    if not roots:
        LOGGER.warning("no image root found (--goods_img_root/--photo_img_root/--data_root): no thumbnails")
    LOGGER.info("serving images from %s", ", ".join(roots) or "nowhere")
    app = create_app(retriever, roots, max_query_chars=args.max_query_chars, k=args.k)
    server = make_server(app, args.host, args.port, log_level="info")
    server.run()


if __name__ == "__main__":
    main()
