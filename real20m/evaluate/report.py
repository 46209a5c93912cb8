"""A self-contained HTML report of retrieval results and a Recall@K plot.

Images are embedded as small base64 JPEG thumbnails, so report.html can be
moved or mailed and never points outside its folder. Every string that comes
from the data (titles, queries, paths) is escaped. The item lookup is injected
(``resolver(pid) -> (title, [image paths])``) so this module knows nothing
about the dataset layout.
"""

import base64
import html
import io
import os

import numpy as np

THUMBNAIL_SIZE = (96, 96)
RESULTS_SHOWN = 10

STYLE = """
body { font-family: sans-serif; margin: 1em; }
table.metrics td, table.metrics th { padding: 2px 8px; text-align: right; }
.query { border-top: 1px solid #999; padding: 0.5em 0; }
.items { display: flex; flex-wrap: wrap; gap: 6px; }
.item { width: 110px; font-size: 11px; border: 3px solid transparent; }
.item.hit { border-color: #2a2; background: #e3f6e3; }
.badge { display: inline-block; background: #2a2; color: #fff; font-weight: bold; padding: 0 3px; }
.label { font-size: 12px; color: #555; margin: 4px 0 2px; }
.legend { font-size: 13px; }
.item img { width: 96px; height: 96px; object-fit: cover; }
.noimg { width: 96px; height: 96px; background: #ddd; }
"""


def _thumbnail_uri(path):
    """A data: URI with a small JPEG of the image, or None when it cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail(THUMBNAIL_SIZE)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_html(paths, max_images):
    cells = []
    for path in paths[:max_images]:
        uri = _thumbnail_uri(path)
        if uri is None:
            cells.append(f'<div class="noimg" title="{html.escape(str(path), quote=True)}">missing</div>')
        else:
            cells.append(f'<img src="{uri}" alt="">')
    return "".join(cells) or '<div class="noimg">no image</div>'


def _item_html(pid, resolver, is_hit, rank):
    title, paths = resolver(int(pid))
    mark = ' <span class="badge">&#10003; GT</span>' if is_hit else ""
    return (f'<div class="item{" hit" if is_hit else ""}">{_image_html(paths, 1)}'
            f'<div>#{rank}{mark} {html.escape(str(title), quote=True)}</div></div>')


def _metrics_html(metrics):
    ks = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("recall@"))
    rows = "".join(f"<tr><td>{k}</td><td>{metrics[f'recall@{k}']:.4f}</td><td>{metrics[f'hit@{k}']:.4f}</td>"
                   f"<td>{metrics[f'map@{k}']:.4f}</td></tr>" for k in ks)
    counters = "".join(f"<li>{html.escape(name)}: {metrics[name]}</li>" for name in
                       ("num_queries", "num_gallery", "queries_without_gt", "gt_queries_missing_from_query_set",
                        "gt_docs_missing_from_gallery", "duplicate_gallery_ids") if name in metrics)
    return (f'<table class="metrics"><tr><th>K</th><th>Recall@K</th><th>hit@K</th><th>mAP@K</th></tr>{rows}'
            f"</table><ul>{counters}</ul>")


def _sample_queries(query_ids, ground_truth, max_queries, seed):
    """Up to max_queries query rows that have ground truth, drawn reproducibly."""
    rows = np.array([i for i, q in enumerate(query_ids.tolist()) if q in ground_truth], dtype=np.int64)
    if len(rows) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_queries, replace=False))
    return rows


def write_report(out_dir, task, query_items, retrieved, gt, metrics, image_resolver, max_queries=20, seed=0):
    """Write ``out_dir/report.html``: metrics, then sampled queries with their top-10 results.

    query_items: (Q,) query pids; retrieved: (Q, >=10) retrieved gallery pids (-1 = none);
    gt: query pid -> GT doc pids; image_resolver: pid -> (title, [image paths]).
    """
    query_items = np.asarray(query_items, dtype=np.int64)
    sections = []
    for row in _sample_queries(query_items, gt, max_queries, seed):
        query_pid = int(query_items[row])
        title, paths = image_resolver(query_pid)
        relevant = set(gt[query_pid])
        results = [pid for pid in retrieved[row, :RESULTS_SHOWN].tolist() if pid >= 0]
        items = "".join(_item_html(pid, image_resolver, pid in relevant, rank + 1)
                        for rank, pid in enumerate(results))
        found = sum(pid in relevant for pid in results)
        sections.append(
            f'<div class="query"><h3>query {query_pid}: {html.escape(str(title), quote=True)}</h3>'
            f'<div class="label">query frames</div><div class="items">{_image_html(paths, 5)}</div>'
            f'<div class="label">top {RESULTS_SHOWN} results: {found} of {len(relevant)} ground-truth items</div>'
            f'<div class="items">{items}</div></div>')
    safe_task = html.escape(str(task), quote=True)
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{safe_task}</title>'
            f"<style>{STYLE}</style></head><body><h1>{safe_task}</h1>{_metrics_html(metrics)}"
            f'<p class="legend">{len(sections)} sampled queries; a green frame and '
            f'<span class="badge">&#10003; GT</span> mark a ground-truth item.</p>'
            f'{"".join(sections)}</body></html>')
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def plot_recall(metrics, path):
    """Recall@K and hit@K against K (log-x) into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("recall@"))
    figure, axes = plt.subplots(figsize=(6, 4))
    for name in ("recall", "hit", "map"):
        axes.plot(ks, [metrics[f"{name}@{k}"] for k in ks], marker="o", label=f"{name}@K")
    axes.set_xscale("log")
    axes.set_xlabel("K")
    axes.set_ylim(0, 1)
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(str(metrics.get("task", "retrieval")))
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
