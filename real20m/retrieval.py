"""Text-query retrieval with a trained QCD model: embed queries, embed items, search a gallery.

    from real20m.retrieval import Retriever
    retriever = Retriever.from_checkpoint("outputs/checkpoints/last.pth.tar", data="Dataset")
    retriever.load_gallery("outputs/eval/video2goods/gallery", items="Dataset/test_file/goods_gallery.txt")
    for hit in retriever.search(["红色条纹棉质连衣裙"], k=5)[0]:
        print(hit.pid, hit.score, hit.source, hit.title)

The model comes from the same places as ``main_cross_domain_emb.py --evaluate``: a training
checkpoint of ours, one in the release layout, ``init`` (the untrained model of the run's seed), or a
folder / ``.safetensors`` file exported by ``python -m real20m.models.convert``, read by
``real20m.model_source``. The configuration is resolved by ``real20m.config.resolve_layers`` with
the checkpoint's trained settings, exactly as ``--evaluate`` resolves it, and the model and
tokenizer are built by the same source, so item features
of ``encode_items`` are those ``--evaluate`` writes for the same checkpoint and item file, and a
search score is the inner product of a query feature with such a gallery feature.

A gallery is a feature folder written by ``--evaluate``, a legacy ``.feat`` text file, or an index
folder saved by ``evaluation.py --save_index`` (with the gallery's item file, which gives the ids
in feature order). Search is exact (or the saved index's approximate) inner-product search with
Faiss, through ``real20m.evaluate.search`` / ``real20m.evaluate.searchers``.

Command line (what ``query2goods_evaluate.sh`` / ``query2video_evaluate.sh`` call):

    python -m real20m.retrieval --embed_queries QUERIES.txt --checkpoint CKPT --out FOLDER \\
        [--config configs/tiny.yaml --data_root Dataset ...any main_cross_domain_emb.py flag]

embeds a ``qid \\t query text`` file into a feature folder that ``evaluation.py`` reads (query ids
= qids).
"""
from __future__ import annotations

import argparse
import logging
import numbers
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from real20m.datasets.annotations import QueryFileError, read_queries
from real20m.errors import InputError
from real20m.utils.entry import exit_on_input_error

logger = logging.getLogger(__name__)

QUERY_BATCH_SIZE = 256
ITEM_BATCH_SIZE = 64
MAX_QUERY_CHARS = 200
MAX_K = 1000   # results one search may ask for: the evaluation's default depth


@dataclass(frozen=True)
class Hit:
    """One search result: the gallery item, its score (inner product) and what is known about it."""
    pid: int
    score: float
    source: str | None        # "goods" | "photo" (video); None without an item file
    title: str | None         # the item's text as evaluation reads it (goods: title; video: title|text|caption)
    image_path: str | None    # the item's first frame (goods: its image)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ search queries


class QueryError(InputError, ValueError):
    """A search query or result count that the ``SearchRules`` refuse; the message says which rule."""


@dataclass(frozen=True)
class SearchRules:
    """What a search accepts, checked alike by ``real20m-search``, ``Retriever.search`` and the
    search page: a query with more than white space, at most ``max_query_chars`` characters once
    its surrounding white space is dropped, and 1 to ``max_k`` results."""
    max_query_chars: int = MAX_QUERY_CHARS
    max_k: int = MAX_K

    def query(self, text) -> str:
        """``text`` without its surrounding white space; QueryError when it breaks a rule."""
        query = text.strip() if isinstance(text, str) else ""
        if not query:
            raise QueryError("empty query: type a few words to search for")
        if len(query) > self.max_query_chars:
            raise QueryError(f"query too long: {len(query)} characters, at most {self.max_query_chars} allowed")
        return query

    def k(self, k) -> int:
        """``k`` as an int; QueryError unless it is a whole number from 1 to ``max_k``."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= self.max_k:
            raise QueryError(f"k must be a whole number from 1 to {self.max_k}, got {k!r}")
        return int(k)


def read_query_lines(path, rules: SearchRules) -> list[str]:
    """One query text a line (``real20m-search --queries``), each checked by ``rules``; blank lines skipped."""
    queries = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                queries.append(rules.query(line))
            except QueryError as error:
                raise QueryError(f"{path}:{lineno}: {error}") from None
    return queries


# ------------------------------------------------------------------------------ gallery search


def gallery_search_config(device_type: str, saved_index: bool, nprobe: int | None = None,
                          search_params: str | None = None, search_backend: str | None = None):
    """The ``SearchConfig`` of ``load_gallery``'s search keywords: a saved index is searched on the
    CPU, features on the GPUs when the model runs on CUDA (and Faiss sees them)."""
    from real20m.evaluate.search_config import SearchConfig
    use_gpu = "auto" if device_type == "cuda" and not saved_index else "never"
    return SearchConfig(backend=search_backend, nprobe=nprobe, params=search_params, use_gpu=use_gpu,
                        show_progress=False)


# ------------------------------------------------------------------------------ the retriever


class Retriever:
    """A QCD model and tokenizer for inference, and optionally a gallery to search.

    Build it with ``from_checkpoint``; ``encode_queries`` / ``encode_items`` give L2-normalised
    float32 features; ``load_gallery`` + ``search`` give ranked ``Hit`` lists."""

    rules = SearchRules()   # what ``search`` accepts; assign other SearchRules to change the limits

    def __init__(self, model, tokenizer, cfg, device="cpu", workdir=None):
        import torch
        from real20m.evaluate.encoder import Encoder
        self.model = model.to(torch.device(device)).eval()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.device = torch.device(device)
        self.encoder = Encoder.for_config(self.model, cfg, self.device)
        self._workdir = workdir   # keeps a temporary output folder (restored tokenizer) alive
        self.gallery_ids: np.ndarray | None = None
        self.gallery_feats = None
        self.gallery_source: str | None = None
        self.catalog = None   # an item_lookup.ItemLookup of the gallery's item file
        self._searcher = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, checkpoint: str, *, config: str | None = None, data: str | None = None,
                        options: Mapping[str, Any] | None = None, device: str = "cpu",
                        output_dir: str | None = None) -> "Retriever":
        """A retriever for ``checkpoint``: our ``.pth.tar``, the release layout, an exported folder /
        ``.safetensors`` file, or ``"init"`` (the untrained model; needs ``config`` and ``data``).

        ``config`` is a YAML file or a packaged config name (``"tiny"``); ``data`` the data root
        (image and text roots of the standard layout); ``options`` any other option by its dotted
        path, e.g. ``{"data.compat": "original", "run.release_config": path, "data.tokenizer": path,
        "data.goods_img_root": path}``. The checkpoint's trained input settings come between
        ``config`` and ``options``. ``output_dir`` keeps the restored tokenizer there (default: a
        temporary folder). Data loading uses no worker processes unless ``data.workers`` says
        otherwise. Nothing is downloaded."""
        from real20m.config import layers_from, log_configuration_notes, resolve_layers
        from real20m.model_source import inspect_source
        workdir = None
        if output_dir is None:
            workdir = tempfile.TemporaryDirectory(prefix="real20m-retriever-")
            output_dir = workdir.name
        settings = {"data.workers": 0, **({"data.data_root": str(data)} if data else {}), **(options or {}),
                    "run.evaluate": True, "run.resume": str(checkpoint), "run.output_dir": str(output_dir)}
        source = inspect_source(str(checkpoint))
        cfg = resolve_layers(layers_from(config, settings), source.trained_settings())
        log_configuration_notes(cfg)
        model, tokenizer = source.load(cfg)
        return cls(model, tokenizer, cfg, device, workdir)

    # ----------------------------------------------------------------- embedding
    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    def encode_queries(self, texts: list[str], batch_size: int = QUERY_BATCH_SIZE) -> np.ndarray:
        """(N, D) float32, L2-normalised query-tower embeddings of ``texts`` (tokenised as in
        training: truncated at ``max_query_len`` tokens)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = [self.encoder.queries(self.tokenizer(texts[start:start + batch_size], padding="longest",
                                                   truncation=True, max_length=self.cfg.data.max_query_len,
                                                   return_tensors="pt"))
               for start in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.empty((0, self.dim), np.float32)

    def encode_items(self, items, batch_size: int = ITEM_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Embed every item of an item file (``pid \\t source \\t query \\t frames \\t text``) as
        ``--evaluate`` does -> (ids int64 (N,), feats float32 (N, D), L2-normalised), in file order.

        Images and texts are read from the configured roots (``data_root`` or the explicit ones)."""
        from torch.utils.data import DataLoader
        from real20m.factory import build_collator, build_eval_data
        from real20m.utils.workers import worker_init_for
        data = self.cfg.data
        loader = DataLoader(build_eval_data(data, str(items)), batch_size=batch_size, shuffle=False,
                            num_workers=data.workers, collate_fn=build_collator(data, self.tokenizer),
                            worker_init_fn=worker_init_for(self.device))
        batches = [(ids, feats) for ids, feats, _ in self.encoder.item_batches(loader)]
        if not batches:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        return np.concatenate([ids for ids, _ in batches]), np.concatenate([feats for _, feats in batches])

    # ----------------------------------------------------------------- gallery
    def load_gallery(self, gallery: str, items: str | None = None, goods_img_root=None, photo_img_root=None,
                     goods_text_root=None, photo_text_root=None, **search) -> None:
        """Use ``gallery`` for ``search``: a feature folder written by ``--evaluate``, a legacy
        ``.feat`` file, or an index folder saved by ``evaluation.py --save_index`` (which needs
        ``items``: its ids, in feature order, and they must be the ones the index was built for).

        ``items`` (the gallery's item file) gives each hit its source, title (from the text file)
        and first image path; roots default to the configured ones (``data_root``). ``search``:
        the keywords of ``gallery_search_config`` (``nprobe``, ``search_params``, ``search_backend``)."""
        from real20m.evaluate.feature_io import FeatureFileError, load_features
        from real20m.evaluate.searchers import is_index_folder, open_searcher
        from real20m.evaluate.item_lookup import ItemFolders, ItemLookup, sibling_text_root
        gallery = str(gallery)
        data = self.cfg.data
        image_roots = {"goods": goods_img_root or data.goods_img_root, "photo": photo_img_root or data.photo_img_root}
        text_roots = {"goods": goods_text_root or sibling_text_root(goods_img_root) or data.goods_text_root,
                      "photo": photo_text_root or sibling_text_root(photo_img_root) or data.photo_text_root}
        catalog = ItemLookup([items], ItemFolders(image_roots, text_roots)) if items else None
        saved_index = is_index_folder(gallery)
        config = gallery_search_config(self.device.type, saved_index, **search)
        if saved_index:
            if catalog is None:
                raise FeatureFileError(f"{gallery}: a saved index holds no item ids; pass the gallery's item file "
                                       f"(items=...) whose features it was built from")
            self._load_index(gallery, catalog.tables[0].pids.astype(np.int64), config)
            self.gallery_feats = None
        else:
            features = load_features(gallery)
            if features.dim != self.dim:
                raise FeatureFileError(f"{gallery}: features of dimension {features.dim}, the model embeds "
                                       f"{self.dim}")
            self._searcher = open_searcher(features.feats, config)
            self.gallery_ids = features.ids
            self.gallery_feats = features.feats
        self.gallery_source = gallery
        self.catalog = catalog

    def _load_index(self, folder, ids, config):
        from real20m.evaluate.searchers import SavedGallery, describe_gallery, load_searcher
        self._searcher = load_searcher(folder, config, SavedGallery(self.dim, describe_gallery(ids)))
        self.gallery_ids = ids

    @property
    def gallery_size(self) -> int:
        return 0 if self.gallery_ids is None else int(len(self.gallery_ids))

    # ----------------------------------------------------------------- search
    def search_features(self, query_feats: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (Q, k'), gallery ids int64 (Q, k')) with k' = min(k, gallery size);
        id -1 where an approximate index found fewer results. Score descending, ties by gallery row."""
        from real20m.evaluate.search import gallery_ids_at, search_all
        if self.gallery_ids is None:
            raise RuntimeError("no gallery: call load_gallery first")
        queries = np.ascontiguousarray(query_feats, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query features must be (N, {self.dim}), got {queries.shape}")
        k = max(1, min(int(k), self.gallery_size))
        scores, rows = search_all(queries, self._searcher, k, show_progress=False)
        ids = gallery_ids_at(self.gallery_ids, rows)
        return scores, ids

    def search(self, queries: list[str] | np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` gallery items of each query (texts, or (N, D) query features), best first.

        ``k`` and every text must pass ``self.rules`` (else QueryError, before any embedding); a
        text is searched without its surrounding white space."""
        k = self.rules.k(k)
        if isinstance(queries, str):
            queries = [queries]
        feats = queries if isinstance(queries, np.ndarray) else \
            self.encode_queries([self.rules.query(text) for text in queries])
        scores, ids = self.search_features(feats, k)
        return [[self._hit(pid, score) for pid, score in zip(id_row.tolist(), score_row.tolist()) if pid >= 0]
                for id_row, score_row in zip(ids, scores)]

    def _hit(self, pid, score) -> Hit:
        if self.catalog is None:
            return Hit(pid=int(pid), score=float(score), source=None, title=None, image_path=None)
        item = self.catalog(int(pid))
        return Hit(pid=int(pid), score=float(score), source=item.source, title=item.title,
                   image_path=item.images[0] if item.images else None)


# ------------------------------------------------------------------------------ command line


def embed_query_file(query_file: str, checkpoint: str, out: str, device: str = "cpu", batch_size=QUERY_BATCH_SIZE,
                     config_args=()) -> int:
    """Embed a ``qid \\t text`` file into feature folder ``out`` (ids = qids; ``features.feat`` too
    with ``--legacy_text_features``); returns the number of queries."""
    from real20m.config import command_line_options, write_config
    from real20m.evaluate.feature_io import write_feature_folder, write_legacy_features
    qids, texts = read_queries(query_file)
    if not len(qids):
        raise QueryFileError(f"{query_file}: no queries")
    os.makedirs(out, exist_ok=True)
    config, options = command_line_options(list(config_args))
    retriever = Retriever.from_checkpoint(checkpoint, config=config, options=options, device=device, output_dir=out)
    write_config(retriever.cfg, out)
    feats = retriever.encode_queries(texts, batch_size)
    write_feature_folder(out, [(qids, feats)], {"queries": os.path.abspath(query_file), "checkpoint": str(checkpoint)},
                         retriever.cfg.run.feature_dtype)
    if retriever.cfg.run.legacy_text_features:
        write_legacy_features(os.path.join(out, "features.feat"), qids, feats)
    logger.info("wrote %d query features of %s to %s", len(qids), query_file, out)
    return len(qids)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Embed text queries (qid<TAB>text) into a feature folder that evaluation.py reads. "
                    "Other arguments are main_cross_domain_emb.py flags (--config, --data_root, ...).")
    parser.add_argument("--embed_queries", required=True, metavar="FILE", help="qid<TAB>query text, one a line")
    parser.add_argument("--checkpoint", required=True,
                        help="our .pth.tar, a release checkpoint, an exported folder, or 'init' (untrained)")
    parser.add_argument("--out", required=True, metavar="FOLDER", help="feature folder to write")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--query_batch_size", type=int, default=QUERY_BATCH_SIZE)
    return parser


def main(argv=None) -> int:
    args, config_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    count = exit_on_input_error(lambda: embed_query_file(args.embed_queries, args.checkpoint, args.out, device,
                                                         args.query_batch_size, config_args))
    print(f"embedded {count} queries of {args.embed_queries} into {Path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
