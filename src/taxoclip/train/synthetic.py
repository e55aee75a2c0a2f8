"""Synthetic training shards: small, learnable, in every layout the data pipeline reads.

Used by tests, benchmarks and dry runs. Each class is a made-up taxon with a colour and a
stripe pattern, so a model can learn the image-text pairing; layouts:

* `builder`: `shard-%05d.tar` with `<uuid>.jpg`, the ten caption files and `<uuid>.json`,
  plus `catalog.parquet` (uuid, shard, split);
* `raw`: `<split>-NNN.tar` with `<key>.jpg` + `<key>.json` (bio-mini's layout);
* `caption`: `<key>.jpg` + `<key>.txt` (general image-text pairs, e.g. replay data).
"""
from __future__ import annotations

import io
import json
import tarfile
import uuid as uuidlib
from pathlib import Path

import numpy as np

from ..taxonomy import Taxon, captions

__all__ = ["synthetic_taxa", "write_shards"]

_GENERA = ["Papilio", "Danaus", "Vanessa", "Morpho", "Pieris", "Colias", "Lycaena", "Heliconius"]
_EPITHETS = ["alba", "rubra", "viridis", "major", "minor", "maculata", "elegans", "vulgaris"]


def synthetic_taxa(n: int) -> list[Taxon]:
    out = []
    for i in range(n):
        g, e = _GENERA[i % len(_GENERA)], _EPITHETS[(i // len(_GENERA)) % len(_EPITHETS)]
        fam = ["Papilionidae", "Nymphalidae", "Pieridae", "Lycaenidae"][i % 4]
        out.append(Taxon("Animalia", "Arthropoda", "Insecta", "Lepidoptera", fam, g, f"{e}{i // 64 or ''}",
                         f"{e} {g.lower()} {i}"))
    return out


def _image(cls: int, rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    hue = np.array([(cls * 37) % 256, (cls * 91) % 256, (cls * 157) % 256], dtype=np.float32)
    y, x = np.mgrid[0:size, 0:size]
    stripes = ((x * (1 + cls % 3) + y * (cls % 5)) // max(2, size // 8)) % 2
    img = hue[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(out: str | Path, *, layout: str = "builder", shards: int = 4, per_shard: int = 32,
                 classes: int = 8, size: int = 32, seed: int = 0, split: str = "train",
                 val_fraction: float = 0.0, split_folders: bool = False) -> list[str]:
    """Write shards into `out`; returns their paths.

    `val_fraction` marks samples `val` (builder layout): at random within shards, or, with
    `split_folders`, whole shards written as the dataset builder does (`<out>/<split>/shard-NNNNN.tar`,
    the catalog's `shard` column relative to `out`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    taxa = synthetic_taxa(classes)
    paths, rows = [], []
    n_val = round(shards * val_fraction) if split_folders else 0
    for s in range(shards):
        shard_split = ("val" if s < n_val else split) if split_folders else None
        name = f"shard-{s:05d}.tar" if layout != "raw" else f"{split}-{s:03d}.tar"
        if shard_split:
            name = f"{shard_split}/shard-{s - (0 if s < n_val else n_val):05d}.tar"
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                cls = int(rng.integers(classes))
                taxon = taxa[cls]
                key = str(uuidlib.UUID(bytes=rng.bytes(16), version=4)) if layout == "builder" else f"syn-{s:03d}{i:05d}"
                sample_split = shard_split or ("val" if layout == "builder" and rng.random() < val_fraction else split)
                _add(tar, f"{key}.jpg", _image(cls, rng, size))
                meta = {"key": key, "split": sample_split, **taxon.as_dict(), "class_index": cls}
                if layout == "caption":
                    _add(tar, f"{key}.txt", f"a picture of thing number {cls}".encode())
                    continue
                if layout == "builder":
                    for fname, text in captions(taxon).items():
                        _add(tar, f"{key}.{fname}", text.encode())
                    rows.append({"uuid": key, "shard": name, "split": sample_split})
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        paths.append(str(path))
    if layout == "builder":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(out / "catalog.parquet", index=False)
    return paths
