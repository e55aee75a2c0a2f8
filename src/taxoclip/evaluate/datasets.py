"""Labelled image sets for evaluation: webdataset shard sets with JSON metadata (bio-mini), and
folders in the reference annotation layout (`metadata.csv` with `filepath`, `class`, optionally
the seven ranks and `common_name`; there `class` is the label to predict, so the taxonomic
class goes in `taxon_class`).

Every set becomes an `EvalDataset`: the images (`ImageRef`s, read by the same loader as
`predict`) and a table with one row per image: `target` (the class to predict), the seven
ranks (`species` as the binomial), `depth` (how many ranks the label fills), and whatever else
the metadata holds (`label`, traits as `trait.<name>`).
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import InputError
from ..io.images import ImageRef

__all__ = ["EvalDataset", "load_datasets", "RANK_NAMES"]

RANK_NAMES = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]


@dataclass
class EvalDataset:
    name: str
    refs: list[ImageRef]
    labels: pd.DataFrame  # one row per ref, in the same order
    sources: list[Path]  # the files the set was read from (their identity keys the embedding cache)

    def __len__(self) -> int:
        return len(self.refs)

    def column(self, name: str) -> pd.Series:
        """A label column by name (`target`, a rank, `label`, `trait.health` or just `health`)."""
        for c in (name, f"trait.{name}"):
            if c in self.labels.columns:
                return self.labels[c]
        traits = sorted(c[6:] for c in self.labels.columns if c.startswith("trait."))
        raise InputError(f"dataset {self.name} has no column {name!r} (it has: "
                         f"{', '.join([c for c in self.labels.columns if not c.startswith('trait.')] + traits)})")


def _depth(row: dict) -> int:
    return max((i + 1 for i, r in enumerate(RANK_NAMES) if str(row.get(r) or "").strip()), default=0)


def _target(row: dict) -> str:
    d = _depth(row)
    return str(row[RANK_NAMES[d - 1]]) if d else ""


def _from_shards(name: str, shards: list[Path]) -> EvalDataset:
    refs, rows = [], []
    for tar in shards:
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf if m.isfile()}
            for mname, m in members.items():
                if not mname.endswith(".json"):
                    continue
                stem = mname[:-5]
                image = next((members[stem + ext] for ext in (".jpg", ".jpeg", ".png", ".webp") if stem + ext in members), None)
                if image is None:
                    continue
                rec = json.load(tf.extractfile(m))
                row = {r: str(rec.get(r) or "") for r in RANK_NAMES}
                row.update(common_name=str(rec.get("common_name") or ""), label=str(rec.get("label") or ""))
                row.update({f"trait.{k}": v for k, v in (rec.get("traits") or {}).items()})
                refs.append(ImageRef(f"{tar}/{image.name}", path=str(tar), offset=image.offset_data, size=image.size))
                rows.append(row)
    return _finish(name, refs, rows, shards)


def _from_folder(folder: Path) -> EvalDataset:
    meta = folder / "metadata.csv"
    try:
        df = pd.read_csv(meta, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"cannot read {meta}: {e}") from None
    missing = [c for c in ("filepath", "class") if c not in df.columns]
    if missing:
        raise InputError(f"{meta} has no {' or '.join(missing)} column (it has: {', '.join(df.columns)})")
    refs, rows = [], []
    for rec in df.to_dict("records"):
        path = folder / rec["filepath"]
        refs.append(ImageRef(str(path), path=str(path)))
        row = {r: rec.get(r, "") for r in RANK_NAMES}
        row["class"] = rec.get("taxon_class", rec.get("class_", ""))  # `class` is the label in this layout
        row.update(common_name=rec.get("common_name", ""), label=rec["class"])
        row.update({f"trait.{k}": v for k, v in rec.items()
                    if k not in {*RANK_NAMES, "filepath", "common_name", "taxon_class", "class_"}})
        rows.append(row)
    ds = _finish(folder.name, refs, rows, [meta])
    ds.labels["target"] = df["class"].to_numpy()  # the layout's class is what to predict
    return ds


def _finish(name: str, refs: list[ImageRef], rows: list[dict], sources: list[Path]) -> EvalDataset:
    if not refs:
        raise InputError(f"dataset {name}: no labelled images in {', '.join(map(str, sources))}")
    labels = pd.DataFrame(rows).fillna("")
    labels.insert(0, "file_name", [r.name for r in refs])
    labels.insert(1, "target", [_target(r) for r in rows])
    labels["depth"] = [_depth(r) for r in rows]
    return EvalDataset(name, refs, labels, sources)


def load_datasets(specs: Sequence[str | Path], splits: Sequence[str] = ("val", "test")) -> list[EvalDataset]:
    """Datasets from paths: a folder with `metadata.csv`; a folder of `<split>-*.tar` shards (one
    set); or a folder of such folders (bio-mini: one dataset per set)."""
    out = []
    for spec in specs:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise InputError(f"dataset {spec}: not a directory")
        if (path / "metadata.csv").is_file():
            out.append(_from_folder(path))
            continue
        here = sorted(t for s in splits for t in path.glob(f"{s}-*.tar"))
        if here:
            out.append(_from_shards(path.name, here))
            continue
        subs = [(d, sorted(t for s in splits for t in d.glob(f"{s}-*.tar"))) for d in sorted(path.iterdir()) if d.is_dir()]
        subs = [(d, ts) for d, ts in subs if ts]
        if not subs:
            raise InputError(f"dataset {spec}: no metadata.csv and no {'/'.join(splits)}-*.tar shards in it or its folders")
        out.extend(_from_shards(d.name, ts) for d, ts in subs)
    return out
