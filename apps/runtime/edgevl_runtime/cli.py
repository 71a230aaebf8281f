"""`edgevl-runtime classify | index | search`: the library from the command line. Results go to
stdout (`--json` for machines); a bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from edgevl_runtime.classify import TEMPLATE, LabelBank, classify, parse_labels
from edgevl_runtime.errors import AppError
from edgevl_runtime.index import ImageIndex
from edgevl_runtime.model import RUNTIMES, EdgeModel


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgevl-runtime", description="Zero-shot classification and text-to-image search with an edgevl export, no torch.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runtime", choices=RUNTIMES, help="default: the first installed one the export has")
    common.add_argument("--precision", help="e.g. fp32, int8 (default: the best verified artifact)")
    common.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", parents=[common], help="rank free labels for each image")
    c.add_argument("export_dir", type=Path)
    c.add_argument("images", type=Path, nargs="+")
    c.add_argument("--labels", required=True, help="comma-separated, e.g. cat,dog,car")
    c.add_argument("--template", default=TEMPLATE, help=f"prompt per label (default {TEMPLATE!r})")
    c.add_argument("--cache", type=Path, help="label-bank folder (default $EDGEVL_RUNTIME_CACHE or ~/.cache/edgevl_runtime)")
    for name, text in (("index", "embed a folder's new and changed images into its index"),
                       ("search", "rank a folder's images by a text query (updates the index first)")):
        s = sub.add_parser(name, parents=[common], help=text)
        s.add_argument("export_dir", type=Path)
        s.add_argument("folder", type=Path)
        if name == "search":
            s.add_argument("query")
            s.add_argument("-k", type=int, default=5, help="how many results (default 5)")
        s.add_argument("--index", type=Path, help="index file (default FOLDER/.edgevl-index.npz)")
    return parser


def run(args: argparse.Namespace) -> int:
    model = EdgeModel(args.export_dir, args.runtime, args.precision, args.threads)
    if args.command == "classify":
        labels = parse_labels(args.labels)
        rankings = classify(model, args.images, labels, LabelBank(model, args.template, args.cache))
        if args.json:
            print(json.dumps({"artifacts": model.describe(), "timings_s": model.timings,
                              "results": [r.__dict__ for r in rankings]}))
            return 0
        for ranking in rankings:
            print(f"{ranking.image}:")
            for label, score in zip(ranking.labels, ranking.scores):
                print(f"  {score:7.4f}  {label}")
        return 0
    index = ImageIndex(model, args.folder, args.index)
    update = index.update()
    if args.command == "index":
        print(json.dumps(update.__dict__) if args.json else str(update))
        return 0
    hits = index.search(args.query, args.k)
    if args.json:
        print(json.dumps({"update": update.__dict__, "hits": [{"path": str(h.path), "score": h.score} for h in hits]}))
    else:
        print(str(update), file=sys.stderr)
        for hit in hits:
            print(f"{hit.score:7.4f}  {hit.path}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except AppError as exc:
        print(f"edgevl-runtime: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
