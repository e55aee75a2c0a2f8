"""Small inputs for the dataset-builder tests: synthetic photos, shard sets, folders with tables."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

LINEAGES = [
    ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Puma", "concolor", "cougar"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Malus", "domestica", "apple"),
    ("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "", "", "", "mushroom"),
]


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Random colour structure at several scales (like a photo's 1/f spectrum): distinct per
    seed, and stable under re-encoding and resizing as real photos are."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size[1], size[0], 3))
    for cells, amplitude in ((3, 90.0), (6, 50.0), (12, 28.0), (24, 14.0)):
        field = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
        acc += (np.asarray(field.resize(size, Image.Resampling.BICUBIC), dtype=np.float64) - 127.5) * amplitude / 127.5
    return Image.fromarray(np.clip(acc + 127.5, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard_set(folder: Path, n: int, *, per_shard: int = 50, seed0: int = 0, prefix: str = "s") -> list[str]:
    """A webdataset shard set of `n` synthetic photos with bio-mini-style JSON; returns the keys."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for start in range(0, n, per_shard):
        with tarfile.open(folder / f"train-{start // per_shard:03d}.tar", "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                key = f"{prefix}-{i:05d}"
                lin = LINEAGES[i % len(LINEAGES)]
                meta = dict(zip(("kingdom", "phylum", "class", "order", "family", "genus"), lin[:6]))
                meta.update(species=f"{lin[5]} {lin[6]}" if lin[6] else "", common_name=lin[7],
                            traits={"n": i} if i % 5 == 0 else {}, license_note="CC0")
                tar_add(tar, f"{key}.jpg", jpeg(photo(seed0 + i)))
                tar_add(tar, f"{key}.json", json.dumps(meta).encode())
                keys.append(key)
    return keys


def write_folder_with_table(folder: Path, n: int, *, seed0: int = 1000) -> Path:
    """A folder of photos and `labels.csv` (filepath + rank columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["filepath,kingdom,phylum,class,order,family,genus,species,common_name"]
    for i in range(n):
        name = f"img{i:03d}.jpg"
        (folder / name).write_bytes(jpeg(photo(seed0 + i)))
        lin = LINEAGES[i % 2]
        rows.append(f"{name},{','.join(lin[:6])},{lin[5]} {lin[6]},{lin[7]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def bio_mini_subset(bio_mini: Path, out: Path, per_set: int = 12, sets=("apple", "butterflies", "fish"),
                    split: str = "train") -> Path:
    """Copy the first `per_set` samples of some bio-mini sets into small shards under `out`."""
    for s in sets:
        src = sorted((bio_mini / s).glob(f"{split}-*.tar"))[0]
        (out / s).mkdir(parents=True, exist_ok=True)
        with tarfile.open(src) as t, tarfile.open(out / s / f"{split}-000.tar", "w") as o:
            n = 0
            for m in t:
                o.addfile(m, t.extractfile(m))
                n += m.name.endswith(".json")
                if n >= per_set:
                    break
    return out


def tiny_jpegs(n: int, bio_mini: Path | None = None) -> list[bytes]:
    """n distinct JPEGs: real photos from bio-mini when given, else generated 64x48 pictures."""
    if bio_mini is not None:
        out = []
        for shard in sorted(bio_mini.glob("*/*.tar")):
            with tarfile.open(shard) as tar:
                for m in tar:
                    if m.name.endswith(".jpg"):
                        out.append(tar.extractfile(m).read())
                        if len(out) == n:
                            return out
    return [jpeg(photo(seed)) for seed in range(n)]
