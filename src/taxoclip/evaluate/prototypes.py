"""Add my species: a vocabulary of class prototypes built from a few labelled photos.

A prototype is the mean of a class's L2-normalised image embeddings, renormalised (nearest
centroid; the inference side of the few-shot protocol, without the support-mean shift that
needs the whole support set at query time). The prototypes are written in the published
vocabulary layout, so `taxoclip predict PHOTOS --vocabulary DIR` (and `serve`, `decide`,
`camtrap` through `--vocabulary`) predict over them like over any vocabulary, with roll-ups
where the classes have a taxonomy. Beside them, `embedding_space.json` records the model
whose space they are in (any other model is refused) and what the calibration needs.

Classes get their taxonomy from the labels (`metadata.csv` rank columns or bio-mini's JSON),
else from the model's own vocabulary when a class name is a binomial it knows (or a genus it
knows plus an epithet); another binomial keeps its genus and epithet only; other names
become common names without ranks.

**Merging** (`taxoclip predict --prototypes DIR`): the prototypes join the text vocabulary in
one softmax. A photo is far more similar to other photos of its species (cosine ~0.7-0.9)
than to its species' text (~0.45-0.6, the modality gap), so raw prototype rows would win
every photo. Each prototype row is scaled by `text_similarity / prototype_similarity`:
a new photo's typical cosine to its class prototype (measured at build time, leave-one-out
over classes with two or more photos) is mapped onto the typical cosine of photos to their
best text row (measured at merge time against the vocabulary merged into). A text row of the
same species as a prototype is dropped: your photos define it. For a species the vocabulary
does not name, the best text row is a relative's, so the rule is cautious: on bio-mini it never
cost the known species accuracy, and a somewhat larger scale (`factor`, `--prototype-scale`)
won more of the new species' photos at no cost (bench/bench_prototypes.py, docs/evaluate.md).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, TaxoclipError
from ..io.images import ImageRef, find_images
from ..textbank import SPACE_FILE, TextBank, read_space, write_space
from .datasets import EvalDataset, load_datasets
from .embeddings import image_embeddings

log = logging.getLogger(__name__)

__all__ = ["build_prototypes", "load_labelled", "class_column", "Prototypes", "load_prototypes", "merge_prototypes",
           "calibrated_factor"]

RANKS7 = ["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet"]
# A photo's cosine to a one-photo prototype of its class, used when no class has two photos to
# measure it on: taxoclip-mini's mean same-species photo-to-photo cosine on bio-mini val + test
# (bench/bench_prototypes.py prints it).
ONE_PHOTO_SIMILARITY = 0.69


def load_labelled(source: str | os.PathLike, splits: Sequence[str] = ("train", "val", "test")) -> EvalDataset:
    """Labelled photos: a folder of class folders (`fox/1.jpg`), a `metadata.csv` folder, shards, or a
    folder of shard sets (bio-mini)."""
    path = Path(source)
    if not path.is_dir():
        raise InputError(f"{source}: not a folder of labelled photos")
    subs = sorted(d for d in path.iterdir() if d.is_dir())
    shards = any(path.glob("*.tar")) or any(next(d.glob("*.tar"), None) for d in subs)  # bio-mini's layout
    if not (path / "metadata.csv").is_file() and subs and not shards:
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


def class_column(labels: pd.DataFrame) -> pd.Series:
    """Each photo's class: its species when every photo has one, else its deepest labelled taxon
    (`target`), else the label it came with (class folder, `class` column)."""
    if "species" in labels.columns and labels["species"].astype(str).str.strip().ne("").all():
        return labels["species"].astype(str).str.strip()
    for c in ("target", "label", "class"):
        if c in labels.columns:
            return labels[c].astype(str).str.strip()
    raise InputError("labelled photos need a class: a class folder, a `class` column or species labels")


def _taxa(names: list[str], labels: pd.DataFrame, cls: pd.Series, model) -> pd.DataFrame:
    """One row of ranks + common name per class (see the module docstring for where they come from)."""
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
    ds = load_labelled(source)
    cls = class_column(ds.labels)
    emb = image_embeddings(model, ds, progress=progress)
    names = sorted(set(cls))
    counts = cls.value_counts()
    few = [n for n in names if counts[n] < min_photos]
    if few:
        raise InputError(f"classes with fewer than {min_photos} photos: {', '.join(few[:10])}")
    protos, resultant, similarity = _prototypes(emb, cls.to_numpy(), names)
    table = _taxa(names, ds.labels, cls, model)
    bank = TextBank.from_arrays(protos.astype(np.float32), table, name=f"prototypes:{Path(source).name}")
    folder = bank.save_published(out)
    write_space(folder, model, photos=[int(counts[n]) for n in names], resultant=resultant.tolist(),
                prototype_similarity=similarity)
    summary = table.assign(class_name=names, photos=[int(counts[n]) for n in names])
    return folder, summary


def _prototypes(emb: np.ndarray, cls: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(unit prototypes [C, D], each class's mean-vector length, a photo's mean cosine to its own
    class prototype left out of it, over classes with two photos or more: None when none has)."""
    sums = np.stack([emb[cls == n].sum(0) for n in names]).astype(np.float64)
    counts = np.array([(cls == n).sum() for n in names])
    norms = np.linalg.norm(sums, axis=1)
    loo = []
    for c, n in enumerate(names):
        if counts[c] >= 2:
            rest = sums[c] - emb[cls == n]
            loo += list(np.einsum("pd,pd->p", emb[cls == n], rest) / np.maximum(np.linalg.norm(rest, axis=1), 1e-12))
    return sums / norms[:, None], norms / counts, (float(np.mean(loo)) if loo else None)


@dataclass
class Prototypes:
    """A prototype vocabulary and what merging it needs (see the module docstring)."""

    bank: TextBank
    resultant: np.ndarray  # per class: length of the mean of its unit photo embeddings
    prototype_similarity: float  # a new photo's typical cosine to its class prototype


def load_prototypes(folder: str | os.PathLike, model) -> Prototypes:
    """The prototypes in `folder`; one clear line when they are not there or from another model's space."""
    bank = TextBank.from_published(folder, model=model)  # refuses another model's embedding space
    space = read_space(Path(folder)) or {}
    if "resultant" not in space:
        raise InputError(f"{folder}: a vocabulary, not prototypes (no calibration in its {SPACE_FILE}); "
                         "build them with `taxoclip prototypes build`")
    similarity = space.get("prototype_similarity") or ONE_PHOTO_SIMILARITY
    return Prototypes(bank, np.asarray(space["resultant"], dtype=np.float64), float(similarity))


def merge_prototypes(text: TextBank, protos: Prototypes, factor: float | None = None) -> TextBank:
    """`text` with the prototype classes added, scaled to compete with it (module docstring);
    `factor` overrides the calibrated scale (1: raw cosines)."""
    import torch

    factor = calibrated_factor(text, protos) if factor is None else factor
    keep = ~_same_species(text.table, protos.bank.table)
    base = text.subset(keep) if not keep.all() else text
    scaled = TextBank.from_arrays(protos.bank.embeddings(torch.float32) * factor, protos.bank.table,
                                  name=protos.bank.name)
    log.info("prototypes %s join %s scaled by %.3f; %d text rows replaced", protos.bank.name, text.name, factor,
             int((~keep).sum()))
    return base.concat(scaled, name=f"{text.name}+{protos.bank.name}")


def calibrated_factor(text: TextBank, protos: Prototypes) -> float:
    """text similarity / prototype similarity (module docstring). The text side is each class's
    photos' mean cosine to the text row most similar to its prototype: for unit photos x_i with
    mean m, mean_i x_i . t = |m| (m / |m|) . t, so the prototype and |m| suffice."""
    import torch

    p = protos.bank.embeddings(torch.float32)
    best = text.top_k(p, 1, 1.0)[1][:, 0].numpy()
    cos = (p * text.subset(best).embeddings(torch.float32)).sum(1).numpy()
    return float(np.mean(protos.resultant * cos)) / protos.prototype_similarity


def _same_species(text: pd.DataFrame, protos: pd.DataFrame) -> np.ndarray:
    """Text rows naming a species (genus + epithet) that a prototype names too."""
    named = protos[(protos["genus"].astype(str) != "") & (protos["species_epithet"].astype(str) != "")]
    wanted = set(zip(named["genus"].astype(str), named["species_epithet"].astype(str)))
    if not wanted:
        return np.zeros(len(text), dtype=bool)
    pairs = text["genus"].astype(str) + "\t" + text["species_epithet"].astype(str)
    return pairs.isin({f"{g}\t{e}" for g, e in wanted}).to_numpy()
