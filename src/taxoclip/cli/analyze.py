"""`taxoclip analyze`: hierarchy, trait orthogonality and trait ordering in a model's embedding space."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("analyze", help="emergent properties: taxonomic hierarchy, traits vs species, trait ordering",
                       description="Measure BioCLIP 2's emergent properties on labelled photos (bio-mini shard sets "
                                   "or metadata.csv folders): see docs/evaluate.md.")
    cs = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    h = cs.add_parser("hierarchy", help="do species sharing more lineage have closer centroids?")
    t = cs.add_parser("traits", help="is within-species variation (a categorical trait) orthogonal to species "
                                     "differences? (several datasets are pooled: their species span the subspace)")
    o = cs.add_parser("order", help="do species line up by a numeric trait along their first principal component?")
    for q in (h, t, o):
        q.add_argument("dataset", nargs="+", help="labelled datasets")
        q.add_argument("--model", action="append", help="model id (repeatable; default taxoclip-mini)")
        q.add_argument("--random-init", action="store_true", help="add the first model's architecture, untrained")
        q.add_argument("--split", action="append", help="shard split(s) (default: val and test)")
    for q in (t, o):
        q.add_argument("--trait", required=True, help="trait name, e.g. sex, life_stage, health, body_length_cm")
    h.set_defaults(func=run)
    t.set_defaults(func=run)
    o.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from .. import analysis
    from ..errors import InputError
    from ..evaluate.datasets import load_datasets
    from ..evaluate.embeddings import image_embeddings, random_init_model
    from ..models import load_model

    models = [load_model(m, precision="fp32") for m in (args.model or ["taxoclip-mini"])]
    if args.random_init:
        models.append(random_init_model(models[0].id))
    sets = load_datasets(args.dataset, args.split or ["val", "test"])
    rows = []
    for model in models:
        embedded = [(ds, image_embeddings(model, ds)) for ds in sets]
        if args.analysis == "traits" and len(sets) > 1:
            # within-species directions are compared with the subspace of all the species given
            embedded = [(_pooled(sets), np.concatenate([e for _, e in embedded]))]
        for ds, emb in embedded:
            try:
                if args.analysis == "hierarchy":
                    table, rho = analysis.hierarchy(emb, ds.labels)
                    row = {"rho": rho, **{r["shared"]: r["mean_cosine"] for r in table.to_dict("records")}}
                elif args.analysis == "traits":
                    row = analysis.trait_orthogonality(emb, ds.labels, ds.column(args.trait))
                else:
                    row = analysis.trait_ordering(emb, ds.labels, ds.column(args.trait))
            except InputError:
                if len(sets) == 1:
                    raise
                continue  # a set without species pairs or without the trait: the others still count
            rows.append({"model": model.id, "dataset": ds.name, **row})
    if not rows:
        raise InputError(f"no dataset of {', '.join(args.dataset)} supports this analysis")
    table = pd.DataFrame(rows)
    cells = [[f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v) for v in r]
             for r in table.itertuples(index=False)]
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for r in cells:
        print("| " + " | ".join(r) + " |")
    return 0


def _pooled(sets):
    """The datasets as one (for analyses that need species from several sets)."""
    import pandas as pd

    from ..evaluate.datasets import EvalDataset

    labels = pd.concat([d.labels for d in sets], ignore_index=True).fillna("")
    return EvalDataset("+".join(d.name for d in sets), [r for d in sets for r in d.refs], labels,
                       [s for d in sets for s in d.sources])
