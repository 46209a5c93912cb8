"""Text-query retrieval with a trained QCD model: embed queries, embed items, search a gallery.

    from real20m.retrieval import Retriever
    retriever = Retriever.from_checkpoint("outputs/checkpoints/last.pth.tar", data_root="Dataset")
    retriever.load_gallery("outputs/eval/video2goods/gallery", items="Dataset/test_file/goods_gallery.txt")
    for hit in retriever.search(["红色条纹棉质连衣裙"], k=5)[0]:
        print(hit.pid, hit.score, hit.source, hit.title)

The model comes from the same places as ``main_cross_domain_emb.py --evaluate``: a training
checkpoint of ours, one in the release layout, ``init`` (the untrained model of the run's seed), or a
folder / ``.safetensors`` file exported by ``python -m real20m.models.convert``. The configuration
is resolved by ``real20m.config.parse_config`` exactly as ``--evaluate`` resolves it, and the model
and tokenizer are built by ``real20m.engine.inference.load_model_for_inference``, so item features
of ``encode_items`` are those ``--evaluate`` writes for the same checkpoint and item file, and a
search score is the inner product of a query feature with such a gallery feature.

A gallery is a feature folder written by ``--evaluate``, a legacy ``.feat`` text file, or an index
folder saved by ``evaluation.py --save_index`` (with the gallery's item file, which gives the ids
in feature order). Search is exact (or the saved index's approximate) inner-product search with
Faiss, through ``real20m.evaluate.search`` / ``real20m.evaluate.index``.

Command line (what ``query2goods_evaluate.sh`` / ``query2video_evaluate.sh`` call):

    python -m real20m.retrieval --embed_queries QUERIES.txt --checkpoint CKPT --out FOLDER \\
        [--config configs/tiny.yaml --data_root Dataset ...any main_cross_domain_emb.py flag]

embeds a ``qid \\t query text`` file into a feature folder that ``evaluation.py`` reads (query ids
= qids).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import numbers
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from real20m.datasets.annotations import QueryFileError, read_queries
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


class QueryError(ValueError):
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


# ------------------------------------------------------------------------------ checkpoints


def is_exported(checkpoint: str) -> bool:
    """A folder or ``.safetensors`` file written by ``python -m real20m.models.convert``."""
    return os.path.isdir(checkpoint) or str(checkpoint).endswith(".safetensors")


def config_argv(checkpoint: str, output_dir: str, overrides: dict) -> list[str]:
    """``main_cross_domain_emb.py --evaluate`` arguments for ``checkpoint`` and ``overrides``.

    An override ``name=value`` becomes ``--name value`` (True: the bare flag; None or False:
    left out); ``args=[...]`` appends raw command-line arguments."""
    argv = ["--evaluate", "--resume", str(checkpoint), "--output_dir", str(output_dir)]
    overrides = dict(overrides)
    raw = list(overrides.pop("args", None) or ())
    for name, value in overrides.items():
        if value is None or value is False:
            continue
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return argv + raw


def _exported_parts(path: str):
    """(model architecture dict, weights path, tokenizer folder or None) of an exported model."""
    from real20m.models.convert import CONVERTED_CONFIG, CONVERTED_WEIGHTS
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    weights = os.path.join(path, CONVERTED_WEIGHTS) if os.path.isdir(path) else path
    config = os.path.join(folder, CONVERTED_CONFIG)
    for needed in (weights, config):
        if not os.path.isfile(needed):
            raise FileNotFoundError(f"{needed}: missing from the exported model {path}")
    with open(config, encoding="utf-8") as handle:
        architecture = json.load(handle)
    tokenizer_dir = os.path.join(folder, "tokenizer")
    return architecture, weights, tokenizer_dir if os.path.isdir(tokenizer_dir) else None


def _exported_tokenizer(cfg, tokenizer_dir, weights):
    """The tokenizer of an exported model: its ``tokenizer/`` folder, ``--tokenizer``, or the
    release's Chinese BERT vocabulary when the weights have exactly its size."""
    from real20m.assets import CHINESE_BERT_VOCAB_DIR
    from real20m.datasets import build_tokenizer, load_saved_tokenizer
    if tokenizer_dir:
        return load_saved_tokenizer(tokenizer_dir)
    if cfg.data.tokenizer:
        return build_tokenizer(cfg.data.tokenizer, None, None)
    from safetensors import safe_open
    with safe_open(weights, framework="pt") as handle:
        key = "text.encoder.embeddings.word_embeddings.weight"
        rows = handle.get_slice(key).get_shape()[0] if key in handle.keys() else None
    tokenizer = build_tokenizer(CHINESE_BERT_VOCAB_DIR, None, None)
    if rows is not None and rows != len(tokenizer):
        raise ValueError(f"{weights}: the exported model has a vocabulary of {rows} tokens and no tokenizer/ "
                         f"folder; pass tokenizer=PATH (the run's OUTPUT_DIR/tokenizer)")
    return tokenizer


def _load_exported(cfg, path: str):
    """(model, tokenizer, cfg) of an exported model, built as ``load_model_for_inference`` builds ours."""
    from real20m.engine.inference import with_trained_inputs
    from real20m.factory import build_model, load_weights, with_embedding_inputs
    architecture, weights, tokenizer_dir = _exported_parts(path)
    tokenizer = _exported_tokenizer(cfg, tokenizer_dir, weights)
    # The exported config names the frame count; the image size is the vision tower's.
    vision = architecture.get("vision") if isinstance(architecture.get("vision"), dict) else {}
    trained = {"clip_length": architecture.get("clip_length"),
               "image_size": architecture.get("image_size") or vision.get("image_size")}
    cfg = with_trained_inputs(cfg, {name: value for name, value in trained.items() if value}, path)
    model = build_model(with_embedding_inputs(architecture, cfg.model), tokenizer, cfg.seed)
    load_weights(model, weights)
    return model, tokenizer, cfg


# ------------------------------------------------------------------------------ gallery metadata


class ItemCatalog:
    """pid -> (source, title, first image path) from a one-item-a-line file, read lazily per pid."""

    def __init__(self, items_file: str, image_roots: dict, text_roots: dict):
        from real20m.datasets.annotations import SOURCES, load_items
        self.sources = SOURCES
        self.table = load_items(items_file)
        self.rows = {int(pid): row for row, pid in enumerate(self.table.pids.tolist())}
        self.image_roots = image_roots
        self.text_roots = text_roots

    def __contains__(self, pid) -> bool:
        return int(pid) in self.rows

    @functools.lru_cache(maxsize=65536)
    def lookup(self, pid: int) -> tuple[str | None, str | None, str | None]:
        row = self.rows.get(int(pid))
        if row is None:
            return None, None, None
        source = int(self.table.sources[row])
        name = self.sources[source]
        _, frame_paths, text_path = self.table.fields(row)
        return name, self._title(pid, source, name, text_path), self._image(pid, name, frame_paths)

    def _title(self, pid, source, name, text_path):
        from real20m.datasets.annotations import UnsafePathError, safe_join
        from real20m.datasets.items import item_text
        from real20m.datasets.layout import shard_path
        root = self.text_roots.get(name)
        if not root:
            return None
        try:
            path = safe_join(root, text_path) if text_path else shard_path(root, pid, "txt")
        except UnsafePathError:
            return None
        if not os.path.isfile(path):
            return None
        return item_text(path, source, []) or None

    def _image(self, pid, name, frame_paths):
        from real20m.datasets.annotations import UnsafePathError, safe_join
        from real20m.datasets.layout import relative_shard_path
        root = self.image_roots.get(name)
        if not root:
            return None
        try:
            return safe_join(root, (frame_paths or [relative_shard_path(pid, "jpg")])[0])
        except UnsafePathError:
            return None


def _is_index_folder(path: str) -> bool:
    from real20m.evaluate.index import INDEX_FORMAT, META_FILE
    meta = os.path.join(path, META_FILE)
    if not (os.path.isdir(path) and os.path.isfile(meta)):
        return False
    try:
        with open(meta, encoding="utf-8") as handle:
            return json.load(handle).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------ the retriever


class Retriever:
    """A QCD model and tokenizer for inference, and optionally a gallery to search.

    Build it with ``from_checkpoint``; ``encode_queries`` / ``encode_items`` give L2-normalised
    float32 features; ``load_gallery`` + ``search`` give ranked ``Hit`` lists."""

    rules = SearchRules()   # what ``search`` accepts; assign other SearchRules to change the limits

    def __init__(self, model, tokenizer, cfg, device="cpu", workdir=None):
        import torch
        self.model = model.to(torch.device(device)).eval()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.device = torch.device(device)
        self._workdir = workdir   # keeps a temporary output folder (restored tokenizer) alive
        self.gallery_ids: np.ndarray | None = None
        self.gallery_feats = None
        self.gallery_source: str | None = None
        self.catalog: ItemCatalog | None = None
        self._index = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, checkpoint: str, device: str = "cpu", **overrides) -> "Retriever":
        """A retriever for ``checkpoint``: our ``.pth.tar``, the release layout, an exported folder /
        ``.safetensors`` file, or ``"init"`` (the untrained model; needs ``config`` and ``data_root``).

        ``overrides`` are ``main_cross_domain_emb.py`` flags without the dashes, e.g.
        ``config="configs/tiny.yaml"``, ``data_root="Dataset"`` (image and text roots of the standard
        layout), ``goods_img_root=...``, ``compat="original"``, ``release_config=...``,
        ``tokenizer=...``, ``workers=...``; ``args=[...]`` passes raw flags; ``output_dir`` keeps the
        restored tokenizer there (default: a temporary folder). Data loading uses no worker
        processes unless ``workers`` says otherwise. Nothing is downloaded."""
        from real20m.config import parse_config
        overrides = dict(overrides)
        output_dir = overrides.pop("output_dir", None)
        workdir = None
        if output_dir is None:
            workdir = tempfile.TemporaryDirectory(prefix="real20m-retriever-")
            output_dir = workdir.name
        overrides.setdefault("workers", 0)
        cfg = parse_config(config_argv(checkpoint, output_dir, overrides))
        model, tokenizer, cfg = cls._load(cfg, checkpoint, device)
        return cls(model, tokenizer, cfg, device, workdir)

    @staticmethod
    def _load(cfg, checkpoint, device):
        import torch
        from real20m.engine.distributed import DistEnv
        from real20m.engine.inference import UNTRAINED, load_model_for_inference
        if checkpoint != UNTRAINED and is_exported(str(checkpoint)):
            return _load_exported(cfg, str(checkpoint))
        dist = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device(device), is_main=True, backend=None)
        return load_model_for_inference(cfg, dist)

    # ----------------------------------------------------------------- embedding
    def _autocast(self):
        import torch
        from real20m.engine.inference import extraction_amp_dtype
        dtype = extraction_amp_dtype(self.cfg)
        if dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    def encode_queries(self, texts: list[str], batch_size: int = QUERY_BATCH_SIZE) -> np.ndarray:
        """(N, D) float32, L2-normalised query-tower embeddings of ``texts`` (tokenised as in
        training: truncated at ``max_query_len`` tokens)."""
        import torch
        import torch.nn.functional as F
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                encoded = self.tokenizer(texts[start:start + batch_size], padding="longest", truncation=True,
                                         max_length=self.cfg.data.max_query_len, return_tensors="pt")
                with self._autocast():
                    query = self.model.encode_query(encoded["input_ids"].long().to(self.device),
                                                    encoded["attention_mask"].long().to(self.device))
                out.append(F.normalize(query.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, self.dim), np.float32)

    def encode_items(self, items, batch_size: int = ITEM_BATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Embed every item of an item file (``pid \\t source \\t query \\t frames \\t text``) as
        ``--evaluate`` does -> (ids int64 (N,), feats float32 (N, D), L2-normalised), in file order.

        Images and texts are read from the configured roots (``data_root`` or the explicit ones)."""
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader
        from real20m.datasets import DeviceJpegDecoder
        from real20m.evaluate.extract import check_title_lengths
        from real20m.factory import build_collator, build_eval_data
        from real20m.utils.workers import worker_init_for
        data = self.cfg.data
        dataset = build_eval_data(data, str(items))
        decoder = DeviceJpegDecoder(data.image_size, train=False, device=self.device) if data.gpu_decode else None
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=data.workers,
                            collate_fn=build_collator(data, self.tokenizer),
                            worker_init_fn=worker_init_for(self.device))
        ids, feats = [], []
        with torch.no_grad():
            for batch in loader:
                check_title_lengths(batch, self.model.max_text_tokens)
                pixels = decoder(batch["jpeg"], batch["plans"]) if decoder is not None else \
                    batch["pixels"].to(self.device)
                with self._autocast():
                    fused = self.model.encode_items(batch["title_ids"].to(self.device),
                                                    batch["title_mask"].to(self.device), pixels).fused
                feats.append(F.normalize(fused.float(), dim=-1).cpu().numpy())
                ids.append(batch["pids"].numpy().astype(np.int64))
        if not ids:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        return np.concatenate(ids), np.concatenate(feats)

    # ----------------------------------------------------------------- gallery
    def load_gallery(self, gallery: str, items: str | None = None, goods_img_root=None, photo_img_root=None,
                     goods_text_root=None, photo_text_root=None, nprobe: int | None = None,
                     search_params: str | None = None) -> None:
        """Use ``gallery`` for ``search``: a feature folder written by ``--evaluate``, a legacy
        ``.feat`` file, or an index folder saved by ``evaluation.py --save_index`` (which needs
        ``items``: its ids, in feature order, and they must be the ones the index was built for).

        ``items`` (the gallery's item file) gives each hit its source, title (from the text file)
        and first image path; roots default to the configured ones (``data_root``)."""
        from real20m.evaluate.feature_io import FeatureFileError, load_features
        gallery = str(gallery)
        data = self.cfg.data
        image_roots = {"goods": goods_img_root or data.goods_img_root, "photo": photo_img_root or data.photo_img_root}
        text_roots = {"goods": goods_text_root or _sibling_text(goods_img_root) or data.goods_text_root,
                      "photo": photo_text_root or _sibling_text(photo_img_root) or data.photo_text_root}
        catalog = ItemCatalog(items, image_roots, text_roots) if items else None
        if _is_index_folder(gallery):
            if catalog is None:
                raise FeatureFileError(f"{gallery}: a saved index holds no item ids; pass the gallery's item file "
                                       f"(items=...) whose features it was built from")
            self._load_index(gallery, catalog.table.pids.astype(np.int64), nprobe, search_params)
            self.gallery_feats = None
        else:
            features = load_features(gallery)
            self.gallery_ids = features.ids
            self.gallery_feats = features.feats
            self._index = None
            if features.dim != self.dim:
                raise FeatureFileError(f"{gallery}: features of dimension {features.dim}, the model embeds "
                                       f"{self.dim}")
        self.gallery_source = gallery
        self.catalog = catalog

    def _load_index(self, folder, ids, nprobe, search_params):
        from real20m.evaluate.index import ShardedIndex, describe_gallery
        index = ShardedIndex.load(folder, describe_gallery(ids), self.dim)
        index.set_search_parameters(nprobe, search_params)
        self._index = index
        self.gallery_ids = ids

    @property
    def gallery_size(self) -> int:
        return 0 if self.gallery_ids is None else int(len(self.gallery_ids))

    # ----------------------------------------------------------------- search
    def search_features(self, query_feats: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (Q, k'), gallery ids int64 (Q, k')) with k' = min(k, gallery size);
        id -1 where an approximate index found fewer results. Score descending, ties by gallery row."""
        from real20m.evaluate.search import gallery_ids_at, search, sort_results
        if self.gallery_ids is None:
            raise RuntimeError("no gallery: call load_gallery first")
        queries = np.ascontiguousarray(query_feats, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query features must be (N, {self.dim}), got {queries.shape}")
        k = max(1, min(int(k), self.gallery_size))
        if self._index is not None:
            scores, rows = self._index.search(queries, k) if len(queries) else \
                (np.empty((0, k), np.float32), np.empty((0, k), np.int64))
            scores, rows = sort_results(np.asarray(scores, np.float32), np.asarray(rows, np.int64))
        else:
            use_gpu = "auto" if self.device.type == "cuda" else "never"
            scores, rows = search(queries, self.gallery_feats, k, use_gpu=use_gpu, show_progress=False)
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
        source, title, image = self.catalog.lookup(int(pid)) if self.catalog is not None else (None, None, None)
        return Hit(pid=int(pid), score=float(score), source=source, title=title, image_path=image)


def _sibling_text(image_root):
    """``<source>/text`` next to an explicit ``<source>/images`` root (the Real400K layout)."""
    if image_root and os.path.basename(os.path.normpath(image_root)) == "images":
        return os.path.join(os.path.dirname(os.path.normpath(image_root)), "text")
    return None


# ------------------------------------------------------------------------------ command line


def embed_query_file(query_file: str, checkpoint: str, out: str, device: str = "cpu", batch_size=QUERY_BATCH_SIZE,
                     config_args=()) -> int:
    """Embed a ``qid \\t text`` file into feature folder ``out`` (ids = qids; ``features.feat`` too
    with ``--legacy_text_features``); returns the number of queries."""
    from real20m.config import write_config
    from real20m.evaluate.feature_io import write_feature_meta, write_feature_shard, write_legacy_features
    qids, texts = read_queries(query_file)
    if not len(qids):
        raise QueryFileError(f"{query_file}: no queries")
    os.makedirs(out, exist_ok=True)
    retriever = Retriever.from_checkpoint(checkpoint, device, output_dir=out, args=list(config_args))
    write_config(retriever.cfg, out)
    feats = retriever.encode_queries(texts, batch_size)
    write_feature_shard(out, 0, qids, feats, retriever.cfg.run.feature_dtype)
    write_feature_meta(out, 1)
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
                                                         args.query_batch_size, config_args), (ValueError,))
    print(f"embedded {count} queries of {args.embed_queries} into {Path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
