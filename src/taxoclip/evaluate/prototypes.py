"""Add my species: a vocabulary of class prototypes built from a few labelled photos.

A prototype is the mean of a class's L2-normalised image embeddings, renormalised (nearest
centroid; the inference side of the few-shot protocol, without the support-mean shift that
needs the whole support set at query time). The prototypes are written in the published
vocabulary layout, so `taxoclip predict PHOTOS --vocabulary DIR` (and `serve`, `decide`,
`camtrap` through `--vocabulary`) predict over them like over any vocabulary, with roll-ups
where the classes have a taxonomy.

Classes get their taxonomy from the labels (`metadata.csv` rank columns or bio-mini's JSON),
else from the model's own vocabulary when a class name is a binomial it knows (or a genus it
knows plus an epithet); another binomial keeps its genus and epithet only; other names
become common names without ranks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, TaxoclipError
from ..io.images import ImageRef, find_images
from .datasets import EvalDataset, load_datasets
from .embeddings import image_embeddings

__all__ = ["build_prototypes", "load_labelled"]

RANKS7 = ["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet"]


def load_labelled(source: str | os.PathLike, splits: Sequence[str] = ("train", "val", "test")) -> EvalDataset:
    """Labelled photos: a folder of class folders (`fox/1.jpg`), a `metadata.csv` folder, or shards."""
    path = Path(source)
    if not path.is_dir():
        raise InputError(f"{source}: not a folder of labelled photos")
    subs = sorted(d for d in path.iterdir() if d.is_dir())
    if not (path / "metadata.csv").is_file() and subs and not any(path.glob("*.tar")):
        refs, rows = [], []
        for d in subs:
            found, _ = find_images([str(d)])
            refs += found
            rows += [{"label": d.name} for _ in found]
        if not refs:
            raise InputError(f"{source}: no photos in its class folders")
        labels = pd.DataFrame(rows)
        labels.insert(0, "file_name", [r.name for r in refs])
        return EvalDataset(path.name, refs, labels, [path])
    sets = load_datasets([path], splits)
    if len(sets) == 1:
        return sets[0]
    refs: list[ImageRef] = [r for s in sets for r in s.refs]
    return EvalDataset(path.name, refs, pd.concat([s.labels for s in sets], ignore_index=True),
                       [p for s in sets for p in s.sources])


def _class_of(labels: pd.DataFrame) -> pd.Series:
    if "species" in labels.columns and labels["species"].astype(str).str.strip().ne("").all():
        return labels["species"].astype(str).str.strip()
    for c in ("label", "target", "class"):
        if c in labels.columns:
            return labels[c].astype(str).str.strip()
    raise InputError("labelled photos need a class: a class folder, a `class` column or species labels")


def _taxa(names: list[str], labels: pd.DataFrame, cls: pd.Series, model) -> pd.DataFrame:
    """One row of ranks + common name per class (see the module docstring for where they come from)."""
    from ..textbank import TextBank

    known = None
    rows = []
    for name in names:
        mine = labels[cls == name]
        has_ranks = all(c in mine.columns for c in RANKS7[:6]) and mine["genus"].astype(str).str.strip().ne("").any()
        if has_ranks:
            first = mine.iloc[0]
            epithet = str(first.get("species_epithet") or (name.split(" ", 1)[1] if " " in name else ""))
            rows.append({**{c: str(first.get(c) or "") for c in RANKS7[:6]}, "species_epithet": epithet,
                         "common_name": str(first.get("common_name") or "")})
            continue
        if known is None:
            try:
                known = TextBank.from_published(model=model).label_data()
            except TaxoclipError:  # a model without a vocabulary: names stay names
                known = pd.DataFrame(columns=RANKS7 + ["species", "common_name"])
        hit = known[known["species"] == name]
        genus = known[known["genus"] == name.split(" ", 1)[0]] if " " in name else known.iloc[0:0]
        if len(hit):
            rows.append({c: str(hit.iloc[0][c]) for c in RANKS7 + ["common_name"]})
        elif len(genus):
            rows.append({**{c: str(genus.iloc[0][c]) for c in RANKS7[:6]}, "species_epithet": name.split(" ", 1)[1],
                         "common_name": ""})
        elif _binomial(name):  # a species the vocabulary does not know: genus and epithet, no higher ranks
            g, e = name.split(" ")
            rows.append({**{c: "" for c in RANKS7[:5]}, "genus": g, "species_epithet": e, "common_name": ""})
        else:
            rows.append({**{c: "" for c in RANKS7}, "common_name": name})
    return pd.DataFrame(rows)


def _binomial(name: str) -> bool:
    parts = name.split(" ")
    return len(parts) == 2 and parts[0][:1].isupper() and parts[0][1:].islower() and parts[1].islower() \
        and all(p.isalpha() for p in parts)


def build_prototypes(model, source: str | os.PathLike, out: str | os.PathLike, *, min_photos: int = 1,
                     progress: bool | None = None) -> tuple[Path, pd.DataFrame]:
    """Prototypes of every class in `source`, written to `out` (published layout). Returns (out,
    one row per class: its ranks, common name and number of photos)."""
    from ..textbank import TextBank

    ds = load_labelled(source)
    cls = _class_of(ds.labels)
    emb = image_embeddings(model, ds, progress=progress)
    names = sorted(set(cls))
    counts = cls.value_counts()
    few = [n for n in names if counts[n] < min_photos]
    if few:
        raise InputError(f"classes with fewer than {min_photos} photos: {', '.join(few[:10])}")
    protos = np.stack([emb[(cls == n).to_numpy()].mean(0) for n in names])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    table = _taxa(names, ds.labels, cls, model)
    bank = TextBank.from_arrays(protos.astype(np.float32), table, name=f"prototypes:{Path(source).name}")
    folder = bank.save_published(out)
    summary = table.assign(class_name=names, photos=[int(counts[n]) for n in names])
    return folder, summary
