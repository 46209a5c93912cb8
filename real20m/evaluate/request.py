"""What one evaluation run is asked to do: a frozen value built once from the command line
(``real20m.evaluate.cli.request_from_args``) or from Python, then only read."""

from dataclasses import dataclass, field

from real20m.evaluate.bootstrap import BootstrapSettings
from real20m.evaluate.distractor_curve import DistractorCurveSettings
from real20m.evaluate.search_config import SearchConfig


@dataclass(frozen=True)
class ReportOptions:
    """``report.html``: the item files that name the results, the media roots, how many queries."""

    query_file: str | None = None        # one-item-a-line file of the queries
    query_texts: str | None = None       # or qid<TAB>text queries (shown as text, no frames)
    gallery_file: str | None = None
    goods_img_root: str | None = None
    photo_img_root: str | None = None
    goods_text_root: str | None = None   # None: 'text' next to the image root
    photo_text_root: str | None = None
    max_queries: int | None = 20         # None: every query


@dataclass(frozen=True)
class EvaluationRequest:
    """Feature files + ground truth -> search -> metrics.json, recall.png and (``report``) report.html.

    The search goes ``max(topk, save_topk)`` deep; the metrics see the first ``topk`` columns and
    ``save_topk`` > 0 saves that many ids and scores of every query. ``bootstrap``: how the
    intervals of metrics.json are drawn (``samples`` 0: none); ``distractor_curve``: Recall@10 as
    the gallery grows (None: not computed).
    """

    query_features: str
    gallery_features: str
    gt_file: str
    output_dir: str
    search: SearchConfig = field(default_factory=SearchConfig)
    task: str = "retrieval"
    topk: int = 1000
    save_topk: int = 0
    report: ReportOptions | None = None   # None: no report.html
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    distractor_curve: DistractorCurveSettings | None = None

    @property
    def depth(self) -> int:
        return max(self.topk, self.save_topk)
