"""``real20m-search``: search a gallery with text queries.

    real20m-search --checkpoint outputs/checkpoints/last.pth.tar \\
        --gallery outputs/eval/video2goods/gallery --items Dataset/test_file/goods_gallery.txt \\
        --data_root Dataset --query "红色条纹棉质连衣裙" -k 20 [--json]
    real20m-search ... --queries queries.txt [--out results.jsonl]

``--gallery`` is a feature folder written by ``main_cross_domain_emb.py --evaluate``, a legacy
``.feat`` file, or an index folder saved by ``evaluation.py --save_index`` (with ``--items``).
One ``--query`` prints a table (pid, source, title, score), or one JSON object with ``--json``;
``--queries FILE`` (one query a line) writes JSON lines, one object per query:
``{"query": ..., "results": [{"pid", "score", "source", "title"}, ...]}``.
Queries and ``-k`` follow ``real20m.retrieval.SearchRules`` (as the search page does): an empty or
over-long query, or ``-k`` out of range, is one line on stderr and exit status 2, before any model
is loaded.
"""
from __future__ import annotations

import argparse
import json
import sys

from real20m.retrieval import QueryError, Retriever, SearchRules, read_query_lines
from real20m.utils.entry import add_version_argument


# This command's model options, by the dotted path of the configuration they set.
CONFIG_OPTIONS = {"dataset_name": "data.dataset_name", "compat": "data.compat",
                  "release_config": "run.release_config", "tokenizer": "data.tokenizer"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="real20m-search", description="Search a Real20M gallery with text queries.")
    parser.add_argument("--checkpoint", required=True,
                        help="our .pth.tar, a release checkpoint, an exported model folder, or 'init'")
    parser.add_argument("--gallery", required=True, help="feature folder, legacy .feat file, or saved index folder")
    parser.add_argument("--items", default=None, help="the gallery's item file (source, title and image of each hit)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", action="append", help="a query text (may be given more than once)")
    what.add_argument("--queries", default=None, help="file with one query text a line (results as JSON lines)")
    parser.add_argument("-k", "--topk", type=int, default=10,
                        help=f"results per query, 1 to {SearchRules.max_k} (default 10)")
    parser.add_argument("--json", action="store_true", help="JSON output for --query")
    parser.add_argument("--out", default=None, help="write the results here instead of stdout")
    parser.add_argument("--data_root", default=None, help="dataset root in the standard layout (image/text roots)")
    parser.add_argument("--dataset_name", default=None, help="Real400K (default) or Real20M")
    for source in ("goods", "photo"):
        for kind in ("img", "text"):
            parser.add_argument(f"--{source}_{kind}_root", default=None)
    parser.add_argument("--config", default=None, help="YAML config (needed for --checkpoint init)")
    parser.add_argument("--compat", default=None, choices=("default", "original"))
    parser.add_argument("--release_config", default=None, help="config.json of a release checkpoint")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (exported models without one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells visited (saved approximate index)")
    parser.add_argument("--search_params", default=None, help="Faiss ParameterSpace string, e.g. efSearch=128")
    parser.add_argument("--search_backend", default=None,
                        help="a registered search backend (default: exact, or the saved index's own)")
    add_version_argument(parser)
    return parser


def result_record(query: str, hits) -> dict:
    return {"query": query, "results": [{"pid": hit.pid, "score": hit.score, "source": hit.source,
                                         "title": hit.title} for hit in hits]}


def format_hits(query: str, hits) -> str:
    lines = [f"query: {query}", f"{'rank':>4}  {'pid':>10}  {'score':>8}  {'source':<6}  title"]
    for rank, hit in enumerate(hits, start=1):
        lines.append(f"{rank:>4}  {hit.pid:>10}  {hit.score:>8.4f}  {hit.source or '-':<6}  {hit.title or '-'}")
    return "\n".join(lines)


def checked_queries(args, rules: SearchRules) -> list[str]:
    """The queries of ``--query`` / ``--queries``, each passed through ``rules`` (QueryError)."""
    rules.k(args.topk)
    if args.queries:
        return read_query_lines(args.queries, rules)
    return [rules.query(query) for query in args.query]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        queries = checked_queries(args, SearchRules())
    except (OSError, QueryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    roots = {f"{source}_{kind}_root": getattr(args, f"{source}_{kind}_root")
             for source in ("goods", "photo") for kind in ("img", "text")}
    options = {path: getattr(args, name) for name, path in CONFIG_OPTIONS.items()} | \
              {f"data.{name}": value for name, value in roots.items()}
    try:
        retriever = Retriever.from_checkpoint(args.checkpoint, config=args.config, data=args.data_root,
                                              options={path: value for path, value in options.items() if value},
                                              device=args.device)
        retriever.load_gallery(args.gallery, args.items, nprobe=args.nprobe, search_params=args.search_params,
                               search_backend=args.search_backend, **roots)
        results = retriever.search(queries, args.topk) if queries else []
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.queries or args.json:
        lines = [json.dumps(result_record(query, hits), ensure_ascii=False) for query, hits in zip(queries, results)]
    else:
        lines = ["\n\n".join(format_hits(query, hits) for query, hits in zip(queries, results))]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
