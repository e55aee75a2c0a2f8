"""`taxoclip analyze`: hierarchy, traits vs species, trait ordering and maps of a model's embedding space."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("analyze", help="emergent properties: taxonomic hierarchy, traits vs species, trait ordering",
                       description="Measure BioCLIP 2's emergent properties on labelled photos (bio-mini shard sets "
                                   "or metadata.csv folders): see docs/analysis.md. Prints a Markdown table; --out "
                                   "writes it as CSV and Markdown.")
    cs = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    h = cs.add_parser("hierarchy", help="do species sharing more lineage have closer centroids? do clusters of "
                                        "photos match the taxa at each rank?")
    t = cs.add_parser("traits", help="is within-species variation (a categorical trait) kept apart from species "
                                     "differences? (the datasets are pooled: their species span the subspace)")
    o = cs.add_parser("order", help="do species line up by a numeric trait along a direction fitted on other "
                                    "species?")
    m = cs.add_parser("map", help="a 2-D map (t-SNE) of the photos coloured by a rank or a trait, as PNG "
                                  "(the datasets are pooled)")
    for q in (h, t, o, m):
        q.add_argument("dataset", nargs="+", help="labelled datasets")
        q.add_argument("--model", action="append", help="model id (repeatable; default taxoclip-mini)")
        q.add_argument("--random-init", action="store_true", help="add the first model's architecture, untrained")
        q.add_argument("--split", action="append", help="shard split(s) (default: val and test)")
        q.add_argument("--out", help="folder for <analysis>.csv and .md")
    for q in (h, o):
        q.add_argument("--pool", action="store_true", help="analyse the datasets as one")
    t.add_argument("--trait", required=True, help="categorical trait, e.g. health, sex, life_stage, caste")
    o.add_argument("--trait", help="numeric trait per photo, e.g. body_length_cm")
    o.add_argument("--values", help="CSV of taxon,value (species binomial, number) instead of --trait")
    o.add_argument("--permutations", type=int, default=999, help="for the p-value (default 999)")
    o.add_argument("--plot", help="folder for the ordering scatter PNG (one per model and dataset)")
    m.add_argument("--colour", "--color", required=True, help="a rank (order, class …) or a trait to colour by")
    m.add_argument("--plot", required=True, help="folder for the map PNG (one per model)")
    m.add_argument("--max-points", type=int, default=3000, help="photos drawn for the map (default 3000)")
    for q in (h, t, o, m):
        q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import InputError
    from ..evaluate.datasets import load_datasets
    from ..evaluate.embeddings import image_embeddings, random_init_model
    from ..models import load_model

    if args.analysis == "order" and bool(args.trait) == bool(args.values):
        raise InputError("analyze order needs one of --trait (a numeric column) or --values (a taxon,value CSV)")
    models = [load_model(m, precision="fp32") for m in (args.model or ["taxoclip-mini"])]
    if args.random_init:
        models.append(random_init_model(models[0].id))
    sets = load_datasets(args.dataset, args.split or ["val", "test"])
    column = {"traits": getattr(args, "trait", None), "map": getattr(args, "colour", None),
              "order": getattr(args, "trait", None)}.get(args.analysis)
    if column:  # pooled analyses keep the sets without it (their species still span the subspace)
        having = _having(sets, column)
        sets = having if args.analysis == "order" else sets
    rows = []
    for model in models:
        embedded = [(ds, image_embeddings(model, ds)) for ds in sets]
        if args.analysis in ("traits", "map") or getattr(args, "pool", False):
            embedded = [_pooled(embedded)]
        for ds, emb in embedded:
            try:
                row = _ANALYSES[args.analysis](args, model, ds, emb)
            except InputError as e:
                if len(embedded) == 1:
                    raise
                print(f"taxoclip analyze: {ds.name}: left out: {e}", file=sys.stderr)
                continue
            rows.append({"model": _label(model, models), "dataset": ds.name, **row})
    if not rows:
        raise InputError(f"no dataset of {', '.join(args.dataset)} supports this analysis")
    _print(rows, args.out, args.analysis)
    return 0


def _hierarchy(args, model, ds, emb) -> dict:
    from .. import analysis

    from ..analysis.species import RANKS

    table, rho = analysis.hierarchy(emb, ds.labels)
    ami = analysis.cluster_agreement(emb, ds.labels).set_index("rank")["ami"]
    return {"species": len(analysis.centroids(emb, ds.labels)[1]), "rho": rho,
            **{f"cos {r['shared']}": r["mean_cosine"] for r in table.to_dict("records")},
            **{f"ami {r}": ami.get(r, float("nan")) for r in RANKS}}


def _traits(args, model, ds, emb) -> dict:
    from .. import analysis

    trait = ds.column(args.trait).rename(args.trait)
    orth = analysis.trait_orthogonality(emb, ds.labels, trait)
    sep = analysis.trait_separation(emb, ds.labels, trait)
    return {**orth, **{k: v for k, v in sep.items() if k != "species"}}


def _order(args, model, ds, emb) -> dict:
    from .. import analysis

    trait = _values(args.values, ds) if args.values else ds.column(args.trait).rename(args.trait)
    summary, table = analysis.trait_ordering(emb, ds.labels, trait, permutations=args.permutations)
    if args.plot:
        from ..analysis.plots import ordering_scatter

        path = ordering_scatter(table, summary, f"{args.plot}/order-{_slug(model.id)}-{ds.name}.png",
                                str(trait.name), f"{model.id} on {ds.name}")
        summary["plot"] = str(path)
    return summary


def _map(args, model, ds, emb) -> dict:
    from ..analysis.plots import embedding_map

    colour = ds.column(args.colour).rename(args.colour)
    path = embedding_map(emb, colour, f"{args.plot}/map-{args.colour}-{_slug(model.id)}.png",
                         f"{model.id}: {ds.name} by {args.colour}", max_points=args.max_points)
    return {"photos": len(ds), "plot": str(path)}


_ANALYSES = {"hierarchy": _hierarchy, "traits": _traits, "order": _order, "map": _map}


def _having(sets, column: str):
    """The datasets that have `column`; none: the first one's one-line error naming what it has."""
    from ..errors import InputError

    kept = []
    for ds in sets:
        try:
            ds.column(column)
            kept.append(ds)
        except InputError:
            pass
    if not kept:
        sets[0].column(column)  # raises, listing the columns it has
    return kept


def _values(path: str, ds):
    """A taxon,value CSV as a numeric column of `ds` (by species binomial)."""
    import pandas as pd

    from ..errors import InputError

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if table.shape[1] < 2:
        raise InputError(f"{path}: need two columns (taxon, value), it has {table.shape[1]}")
    values = dict(zip(table.iloc[:, 0].str.strip(), pd.to_numeric(table.iloc[:, 1], errors="coerce")))
    out = ds.labels["species"].astype(str).map(values)
    if out.notna().sum() == 0:
        raise InputError(f"{path}: none of its taxa is a species of {ds.name}")
    return out.rename(str(table.columns[1]))


def _pooled(embedded):
    """The datasets as one (for analyses that need species from several sets)."""
    import numpy as np
    import pandas as pd

    from ..evaluate.datasets import EvalDataset

    if len(embedded) == 1:
        return embedded[0]
    sets = [d for d, _ in embedded]
    labels = pd.concat([d.labels for d in sets], ignore_index=True).fillna("")
    name = "+".join(d.name for d in sets) if len(sets) <= 3 else f"{len(sets)} sets pooled"
    ds = EvalDataset(name, [r for d in sets for r in d.refs], labels,
                     [s for d in sets for s in d.sources])
    return ds, np.concatenate([e for _, e in embedded])


def _label(model, models) -> str:
    return f"{models[0].id} (random init)" if "random-init" in model.id else model.id


def _slug(model_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "_", model_id.replace("random-init", "random")).strip("_")[-60:]


def _print(rows: list[dict], out: str | None, stem: str) -> None:
    import numpy as np
    import pandas as pd

    table = pd.DataFrame(rows)
    cells = [["" if v is None or (isinstance(v, float) and v != v) else
              (f"{v:.3g}" if isinstance(v, (float, np.floating)) and abs(v) < 0.001 else
               f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)) for v in r]
             for r in table.itertuples(index=False)]
    md = "\n".join(["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
                   + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"
    print(md, end="")
    if out:
        from pathlib import Path

        Path(out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(out) / f"{stem}.csv", index=False)
        (Path(out) / f"{stem}.md").write_text(md)
