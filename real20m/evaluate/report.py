"""A self-contained HTML report of retrieval results and a Recall@K plot.

Images are embedded as small base64 JPEG thumbnails, so the pages can be moved
or mailed and never point outside their folder. The pages are rendered by a
Jinja2 template with autoescaping on, so every string that comes from the data
(titles, task names, paths) is escaped. The item lookup is injected
(``lookup(pid) -> ItemView``: source, title, image paths) so this module knows
nothing about the dataset layout.

Each shown query has its own title and frames (a text query: its text alone), a panel of
its ground-truth items, and its top results with their scores, ground-truth hits marked. Up to
QUERIES_PER_PAGE queries go in ``report.html`` itself; more are split over
``report_001.html``, ``report_002.html``, ... that ``report.html`` links to.
"""

import base64
import dataclasses
import io
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import jinja2
import numpy as np

from real20m.evaluate.metric_registry import METRICS
from real20m.evaluate.item_lookup import ItemView
from real20m.evaluate.metrics import COUNTERS_SHOWN, RetrievalScores, format_interval

THUMBNAIL_SIZE = (96, 96)
RESULTS_SHOWN = 20
GT_SHOWN = 20            # ground-truth items shown per query (the count says how many there are)
QUERY_FRAMES_SHOWN = 5
QUERIES_PER_PAGE = 100   # what a browser still opens quickly with thumbnails embedded

STYLE = """
body { font-family: sans-serif; margin: 1em; }
table.metrics td, table.metrics th { padding: 2px 8px; text-align: right; }
.query { border-top: 1px solid #999; padding: 0.5em 0; }
.items { display: flex; flex-wrap: wrap; gap: 6px; }
.item { width: 110px; font-size: 11px; border: 3px solid transparent; }
.item.hit { border-color: #2a2; background: #e3f6e3; }
.item.gt { border-color: #27c; }
.badge { display: inline-block; background: #2a2; color: #fff; font-weight: bold; padding: 0 3px; }
.score { color: #555; }
.label { font-size: 12px; color: #555; margin: 4px 0 2px; }
.legend { font-size: 13px; }
.item img { width: 96px; height: 96px; object-fit: cover; }
.noimg { width: 96px; height: 96px; background: #ddd; }
"""

PAGE = jinja2.Template("""<!DOCTYPE html><html><head><meta charset="utf-8"><title>{{ task }}</title>
<style>{{ style }}</style></head><body><h1>{{ task }}</h1>
{%- macro image(picture) -%}
{%- if picture.uri %}<img src="{{ picture.uri }}" alt="">
{%- else %}<div class="noimg" title="{{ picture.path }}">{{ picture.reason }}</div>{% endif -%}
{%- endmacro -%}
{%- macro item(entry, kind) -%}
<div class="item{% if entry.hit %} hit{% endif %}{% if kind == 'gt' %} gt{% endif %}">{{ image(entry.picture) }}<div>
{%- if entry.rank %}#{{ entry.rank }}{% endif %}{% if entry.hit %} <span class="badge">&#10003; GT</span>{% endif %}
{%- if entry.score is not none %} <span class="score">{{ '%.4f' % entry.score }}</span>{% endif %} {{ entry.title }}</div></div>
{%- endmacro -%}
{% if metrics %}<table class="metrics"><tr><th>K</th>{% for column in metrics.columns %}<th>{{ column }}</th>
{%- endfor %}</tr>
{%- for row in metrics.rows %}<tr><td>{{ row.k }}</td>{% for cell in row.cells %}<td>{{ cell }}</td>
{%- endfor %}</tr>{% endfor %}</table>
<ul>{% for name, value in metrics.counters %}<li>{{ name }}: {{ value }}</li>{% endfor %}</ul>{% endif %}
<p class="legend">{{ legend }}; a green frame and <span class="badge">&#10003; GT</span> mark a ground-truth item
among the results, the number after the rank is the similarity score.</p>
{% if pages %}<ul class="pages">{% for page in pages %}<li><a href="{{ page.file }}">queries {{ page.first }} to
{{ page.last }}</a></li>{% endfor %}</ul>{% endif %}
{% if index_file %}<p><a href="{{ index_file }}">back to the summary</a></p>{% endif %}
{% for query in queries %}<div class="query"><h3>{{ query.kind }} {{ query.pid }}: {{ query.title }}</h3>
{% if query.pictures %}<div class="label">query frames</div><div class="items">{% for picture in query.pictures %}
{{- image(picture) }}{% endfor %}</div>{% endif %}
<div class="label">ground truth: {{ query.gt_count }} items{% if query.gt_count > query.gt|length %}
(first {{ query.gt|length }} shown){% endif %}</div><div class="items">{% for entry in query.gt %}{{ item(entry, 'gt') }}
{%- endfor %}</div>
<div class="label">top {{ query.results|length }} results: {{ query.found }} of {{ query.gt_count }} ground-truth items
</div><div class="items">{% for entry in query.results %}{{ item(entry, 'result') }}{% endfor %}</div></div>
{% endfor %}</body></html>
""", autoescape=True)


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


def _pictures(paths, max_images):
    """Thumbnails of the first images; a grey placeholder (the path in its tooltip) for unreadable ones."""
    pictures = [{"uri": _thumbnail_uri(path), "path": str(path), "reason": "missing"} for path in paths[:max_images]]
    return pictures or [{"uri": None, "path": "", "reason": "no image"}]


def _item(pid, lookup, rank=None, score=None, hit=False):
    item = lookup(int(pid))
    return {"title": item.display_title(), "picture": _pictures(item.images, 1)[0], "rank": rank, "score": score,
            "hit": hit}


def _metrics_view(scores):
    """The report's table: a column per metric the registry shows in reports (followed by its
    bootstrap interval's column when it has one), a row per K; the counters and median rank below."""
    shown = [metric for metric in METRICS.values() if metric.display.in_report and metric.display.column]
    columns = [cell for metric in shown for cell in _metric_columns(metric, scores)]
    rows = [{"k": k, "cells": [cell for metric in shown for cell in _metric_cells(metric, scores, k)]}
            for k in scores.ks(shown)]
    counters = [(name, scores.counters[name]) for name in COUNTERS_SHOWN if name in scores.counters]
    if scores.median_first_gt_rank is not None:
        counters.append(("median_first_gt_rank", f"{scores.median_first_gt_rank:g}"))
    return {"columns": columns, "rows": rows, "counters": counters}


def _has_interval(metric, scores):
    return scores.intervals is not None and bool(scores.intervals.at(metric.name))


def _metric_columns(metric, scores):
    if not _has_interval(metric, scores):
        return [metric.display.column]
    return [metric.display.column, f"{scores.intervals.settings.level:.0%} interval"]


def _metric_cells(metric, scores, k):
    value = f"{scores.at(metric.name).get(k, float('nan')):.4f}"
    if not _has_interval(metric, scores):
        return [value]
    return [value, format_interval(scores.intervals.at(metric.name).get(k))]


def _sample_queries(query_ids, ground_truth, max_queries, seed):
    """Query rows that have ground truth: all of them (max_queries None) or a reproducible sample."""
    rows = np.array([i for i, q in enumerate(query_ids.tolist()) if q in ground_truth], dtype=np.int64)
    if max_queries is not None and len(rows) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_queries, replace=False))
    return rows


def _query_side(query_pid, lookup, query_texts):
    """How a query is shown: a text query by its text alone (it has no image), an item query by
    its title and frames."""
    if query_pid in query_texts:
        return {"kind": "text query", "title": str(query_texts[query_pid]), "pictures": []}
    item = lookup(query_pid)
    return {"kind": "query", "title": item.display_title(), "pictures": _pictures(item.images, QUERY_FRAMES_SHOWN)}


def _query_view(found: "FoundItems", row: int, lookup, query_texts):
    query_pid = int(found.query_ids[row])
    relevant = list(found.ground_truth[query_pid])
    score_row = None if found.scores is None else found.scores[row]
    results = [_item(pid, lookup, rank + 1, None if score_row is None else float(score_row[rank]), pid in relevant)
               for rank, pid in enumerate(found.retrieved[row][:RESULTS_SHOWN].tolist()) if pid >= 0]
    return {"pid": query_pid, **_query_side(query_pid, lookup, query_texts),
            "gt": [_item(pid, lookup) for pid in relevant[:GT_SHOWN]], "gt_count": len(relevant),
            "results": results, "found": sum(entry["hit"] for entry in results)}


def _write_page(path, **view):
    with open(path, "w", encoding="utf-8") as f:
        f.write(PAGE.render(style=STYLE, **view))
    return path


@dataclass(frozen=True)
class FoundItems:
    """What one evaluation found, as the report shows it."""

    query_ids: np.ndarray                    # (Q,) query pids
    retrieved: np.ndarray                    # (Q, depth) retrieved gallery pids, -1 = none
    ground_truth: Mapping[int, Sequence[int]]
    metrics: RetrievalScores
    scores: np.ndarray | None = None         # (Q, depth) their similarity scores


def write_report(out_dir, task, found: FoundItems, lookup: Callable[[int], ItemView],
                 query_texts: Mapping[int, str] | None = None, max_queries: int | None = 20, seed: int = 0):
    """Write ``out_dir/report.html`` (and its pages): metrics, then the shown queries and their results.

    ``lookup`` describes an item by its pid (``item_lookup.ItemLookup``); ``query_texts``: qid ->
    text of the text queries (each shown as its text, with no frames); ``max_queries``: how many
    queries with ground truth to show (a reproducible sample), None for all of them. Returns the
    path of report.html.
    """
    query_texts = query_texts or {}
    found = dataclasses.replace(found, query_ids=np.asarray(found.query_ids, dtype=np.int64))
    rows = _sample_queries(found.query_ids, found.ground_truth, max_queries, seed)
    legend = f"{len(rows)} {'sampled ' if max_queries is not None else ''}queries with ground truth"
    metrics = found.metrics

    def views(chunk):
        return [_query_view(found, row, lookup, query_texts) for row in chunk]

    index_path = os.path.join(out_dir, "report.html")
    page_view = {"task": str(task), "legend": legend}
    if len(rows) <= QUERIES_PER_PAGE:
        return _write_page(index_path, metrics=_metrics_view(metrics), queries=views(rows), **page_view)
    pages = []
    for number, first in enumerate(range(0, len(rows), QUERIES_PER_PAGE), start=1):
        chunk = rows[first:first + QUERIES_PER_PAGE]
        page = {"file": f"report_{number:03d}.html", "first": first + 1, "last": first + len(chunk)}
        _write_page(os.path.join(out_dir, page["file"]), queries=views(chunk), index_file="report.html",
                    **page_view)
        pages.append(page)
    return _write_page(index_path, metrics=_metrics_view(metrics), pages=pages, queries=[], **page_view)


def plot_recall(scores, path, title="retrieval", distractor_curve=None):
    """Every metric the registry plots (Recall@K, hit@K, mAP@K) against K (log-x) into a PNG, each
    with its bootstrap interval as a band when it has one; with ``distractor_curve`` (its points)
    a second panel shows Recall@10 against the gallery size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 if distractor_curve is None else 2
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    _plot_metrics(axes[0][0], scores, title)
    if distractor_curve is not None:
        _plot_distractor_curve(axes[0][1], distractor_curve)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_metrics(axes, scores, title):
    for metric in (metric for metric in METRICS.values() if metric.display.in_plot):
        values = scores.at(metric.name)
        ks = sorted(values)
        line, = axes.plot(ks, [values[k] for k in ks], marker="o", label=f"{metric.name}@K")
        bounds = scores.intervals.at(metric.name) if scores.intervals is not None else {}
        shaded = [k for k in ks if k in bounds]
        if shaded:
            axes.fill_between(shaded, [bounds[k][0] for k in shaded], [bounds[k][1] for k in shaded],
                              color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xscale("log")
    axes.set_xlabel("K")
    axes.set_ylim(0, 1)
    axes.grid(True, which="both", alpha=0.3)
    banded = scores.intervals is not None and scores.intervals.bounds
    axes.set_title(str(title) + (f" (bands: {scores.intervals.settings.level:.0%} intervals)" if banded else ""))
    axes.legend()


def _plot_distractor_curve(axes, points):
    sizes = [point.gallery_size for point in points]
    axes.plot(sizes, [point.recall for point in points], marker="o", color="tab:red")
    for point in points:
        axes.annotate(f"{point.fraction:.0%}", (point.gallery_size, point.recall), textcoords="offset points",
                      xytext=(0, 6), ha="center", fontsize=8)
    axes.set_xlabel("gallery size (ground-truth items + share of the others)")
    axes.set_ylabel("Recall@10")
    axes.set_ylim(0, 1)
    axes.grid(True, alpha=0.3)
    axes.set_title("Recall@10 as distractors are added")
