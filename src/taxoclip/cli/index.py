"""`taxoclip index`: find the most similar photos in a collection, and flag photos unlike any of them."""
from __future__ import annotations

import argparse
import sys

from ._options import add_model_options, positive_int


def register(sub) -> None:
    p = sub.add_parser("index", help="nearest-photo search over a photo collection, with a novelty flag",
                       description="Index a photo collection's image embeddings, then find each query photo's most "
                                   "similar photos; a query is `novel` when its nearest photo is less similar than "
                                   "the collection's own photos are to theirs at --novelty-quantile.")
    cs = p.add_subparsers(dest="index_command", metavar="STEP", required=True)
    b = cs.add_parser("build", help="index photos (files, folders, lists, shards)")
    b.add_argument("images", nargs="+")
    b.add_argument("--output", "-o", required=True, help="index folder to write")
    b.add_argument("--labelled", action="store_true",
                   help="the inputs are labelled photo sets (class folders, metadata.csv, or shards with JSON "
                        "labels, e.g. bio-mini): search results name each match's class")
    b.add_argument("--split", action="append", help="with --labelled: shard split(s) to index (default: all)")
    b.add_argument("--novelty-quantile", type=float, default=0.05,
                   help="share of the collection's own nearest-neighbour similarities below the novelty line "
                        "(default 0.05)")
    add_model_options(b)
    b.set_defaults(func=_build)
    s = cs.add_parser("search", help="the most similar indexed photos for each query photo")
    s.add_argument("index", help="index folder from `taxoclip index build`")
    s.add_argument("images", nargs="+")
    s.add_argument("--k", type=positive_int, default=5)
    s.add_argument("--output", "-o", default="stdout")
    s.add_argument("--format", choices=["csv", "table", "jsonl", "parquet"])
    s.set_defaults(func=_search)


def _embed(images, model: str, **kw):
    from ..classify import ImageEmbedder

    names, vecs, failed = [], [], 0
    for name, vec, err in ImageEmbedder(model, **kw).embed_iter(images, normalize=True, progress=None):
        if err:
            failed += 1
            print(f"taxoclip index: {name}: {err}", file=sys.stderr)
            continue
        names.append(name)
        vecs.append(vec)
    import numpy as np

    return names, (np.stack(vecs) if vecs else np.zeros((0, 1), np.float32)), failed


def _build(args: argparse.Namespace) -> int:
    from ..evaluate.search import PhotoIndex

    labels = None
    if args.labelled:
        names, vecs, labels = _embed_labelled(args)
        failed = 0
    else:
        names, vecs, failed = _embed(args.images, args.model,
                                     pretrained=args.pretrained, device=args.device, precision=args.precision)
    index = PhotoIndex.build(names, vecs, args.model, args.novelty_quantile, labels)
    index.save(args.output)
    print(f"taxoclip index: {len(names)} photos indexed -> {args.output} (novel below similarity "
          f"{index.threshold:.3f})", file=sys.stderr)
    return 1 if failed else 0


def _embed_labelled(args: argparse.Namespace):
    """(names, vectors, class of each photo) of labelled sets; embeddings cached like `eval`'s."""
    import numpy as np

    from ..evaluate.embeddings import image_embeddings
    from ..evaluate.prototypes import class_column, load_labelled
    from ..models import load_model

    model = load_model(args.model, pretrained=args.pretrained, device=args.device, precision=args.precision)
    names, vecs, labels = [], [], []
    for source in args.images:
        ds = load_labelled(source, args.split or ("train", "val", "test"))
        vecs.append(image_embeddings(model, ds))
        names += ds.labels["file_name"].tolist()
        labels += class_column(ds.labels).tolist()
    return names, np.concatenate(vecs), labels


def _search(args: argparse.Namespace) -> int:
    import torch

    from ..evaluate.search import FEW_QUERIES, PhotoIndex
    from ..io.images import find_images
    from ..io.writers import format_for, open_writer

    refs, _ = find_images(args.images)  # found once: the embedder passes found refs through
    if len(refs) < FEW_QUERIES:
        # one photo at a time gains nothing from a second thread, and waits for it: one query,
        # decode + image tower, 21.5 ms on one thread vs 75.9 on two (bench/bench_index.py)
        torch.set_num_threads(1)
    index = PhotoIndex.load(args.index)
    names, vecs, failed = _embed(refs or args.images, index.model)  # none found: its error names the inputs
    sims, pos, novel = index.search(vecs, args.k) if len(names) else ([], [], [])
    cols = ["file_name", "rank", "match"] + ([] if index.labels is None else ["label"]) + ["similarity", "novel"]
    with open_writer(format_for(args.output, args.format), args.output, cols) as w:
        for q, name in enumerate(names):
            w.write([{"file_name": name, "rank": r + 1, "match": index.names[int(j)],
                      **({} if index.labels is None else {"label": index.labels[int(j)]}), "similarity": float(s),
                      "novel": bool(novel[q])} for r, (s, j) in enumerate(zip(sims[q], pos[q]))])
    return 1 if failed else 0
