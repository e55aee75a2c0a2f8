"""Leakage control on bio-mini: plant near-copies of evaluation photos in the training set and
measure how many `taxoclip data build --exclude` removes (recall) and how many distinct training
photos it removes by mistake (false removals).

    python bench/leakage_eval.py [--bio-mini DIR] [--limit N] [--transforms all,jpeg,...] [--workers N]

Evaluation set: bio-mini's val + test shards. Training set: bio-mini's train shards plus, for
each evaluation photo, one planted copy per transform:

- jpeg: re-encoded at JPEG quality 30-95
- resize: resized by a factor of 0.5-2
- crop: 95-100% of the width and of the height kept, at a random offset ("5% crop")
- brightness: brightness scaled by 0.9-1.1
- all: all four at once (crop, resize, brightness, then JPEG)

Every number comes from a real `taxoclip.data.build` run with `--exclude`: a planted copy
counts as caught when removed.csv lists it as an evaluation image; a bio-mini training photo
listed there is a false removal. Prints one line per transform and writes the pairs it
counted as false removals to `<workdir>/false_removals.csv` for inspection.

bio-mini's splits were deduplicated by exact MD5 only, so some false removals are the same
photo in two splits. They are reported apart, by an objective criterion: a pair is *the same
image up to resampling* when both photos, resized to 64x64 RGB (Lanczos, aspect ignored),
differ by a PSNR of at least 30 dB (re-encodes and resizes of one photo mostly are; photos of
different subjects are at 12-20 dB; two frames of a static video scene can reach ~31 dB and
then count as the same image). The criterion ignores crops, so the same photo framed
differently counts as distinct: look at false_removals.csv before calling a pair distinct.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import tarfile
import tempfile
import time
from itertools import islice
from pathlib import Path

from PIL import Image, ImageEnhance

TRANSFORMS = ("jpeg", "resize", "crop", "brightness", "all")


def plant(img: Image.Image, kind: str, rng: random.Random) -> bytes:
    img = img.convert("RGB")
    if kind in ("crop", "all"):
        w, h = img.size
        cw, ch = max(1, round(w * rng.uniform(0.95, 1.0))), max(1, round(h * rng.uniform(0.95, 1.0)))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch))
    if kind in ("resize", "all"):
        s = rng.uniform(0.5, 2.0)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC)
    if kind in ("brightness", "all"):
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.9, 1.1))
    quality = rng.randint(30, 95) if kind in ("jpeg", "all") else 90
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def samples(shards: list[Path]):
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {}
            for m in tar:
                if m.isfile():
                    members[m.name] = tar.extractfile(m).read()
            for name, data in members.items():
                if name.endswith(".jpg"):
                    key = name[:-4]
                    yield key, data, members.get(key + ".json", b"{}")


SAME_IMAGE_PSNR = 30.0  # dB between 64x64 renditions: "the same image up to resampling"


def same_image_psnr(a: bytes, b: bytes) -> float:
    """PSNR (dB) between two photos resized to 64x64 RGB: >= SAME_IMAGE_PSNR is one image resampled."""
    import numpy as np

    x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS),
                       dtype=np.float64) for d in (a, b))
    mse = float(np.mean((x - y) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def images_of(tars: list[Path], keys: set[str]) -> dict[str, bytes]:
    """The image bytes of the given sample keys in some tars."""
    out = {}
    for tar in tars:
        with tarfile.open(tar) as t:
            for m in t:
                if m.name.endswith(".jpg") and m.name[:-4] in keys:
                    out[m.name[:-4]] = t.extractfile(m).read()
    return out


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_sample(tar: tarfile.TarFile, key: str, jpeg: bytes, meta: bytes) -> None:
    add(tar, f"{key}.jpg", jpeg)
    add(tar, f"{key}.json", meta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bio-mini", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "bio-mini"))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N evaluation photos (0: all)")
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N training photos (0: all)")
    ap.add_argument("--transforms", default="all", help=f"comma-separated, of {', '.join(TRANSFORMS)}")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="keep the planted shards and the build here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep", default="0.91,0.92,0.93,0.94,0.95,0.97",
                    help="also report the aligned rule at these acceptance thresholds (the build runs at the lowest)")
    args = ap.parse_args()

    from taxoclip.data.build import BuildConfig, BuildOptions, build
    from taxoclip.data.imaging import ImageSpec
    from taxoclip.data.leakage import AlignedMatch

    root = Path(args.bio_mini)
    eval_shards = sorted(root.glob("*/val-*.tar")) + sorted(root.glob("*/test-*.tar"))
    train_shards = sorted(root.glob("*/train-*.tar"))
    if not eval_shards:
        print(f"bio-mini not found at {root}", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in args.transforms.split(",") if k.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="leakage-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    # Evaluation set (as shards) and the training set with planted copies.
    eval_dir, train_dir = work / "eval", work / "train"
    eval_dir.mkdir(exist_ok=True)
    train_dir.mkdir(exist_ok=True)
    planted: dict[str, str] = {}  # planted key -> evaluation key
    n_eval = n_train = 0
    with tarfile.open(eval_dir / "eval-000.tar", "w") as etar, tarfile.open(train_dir / "planted-000.tar", "w") as ptar:
        for n_eval, (key, data, meta) in enumerate(islice(samples(eval_shards), args.limit or None), 1):
            add_sample(etar, key, data, meta)
            img = Image.open(io.BytesIO(data))
            for kind in kinds:
                pkey = f"planted-{kind}-{key}"
                planted[pkey] = key
                add_sample(ptar, pkey, plant(img, kind, rng), meta)
    with tarfile.open(train_dir / "train-000.tar", "w") as ttar:
        for n_train, (key, data, meta) in enumerate(islice(samples(train_shards), args.train_limit or None), 1):
            add_sample(ttar, key, data, meta)

    out = work / "out"
    start = time.perf_counter()
    sweep = sorted(float(x) for x in args.sweep.split(",") if x.strip())
    default_accept = AlignedMatch().accept
    lowest = min(sweep + [default_accept])
    # Dedup off: count leakage alone. The aligned rule runs at the lowest threshold; a higher
    # one would have removed exactly the aligned matches scoring at least that much (the other
    # rules are checked first and do not depend on it).
    config = BuildConfig(image=ImageSpec(min_side=8), dedup_threshold=0, aligned=AlignedMatch(accept=lowest))
    build([str(train_dir)], out, exclude=[str(eval_dir)], config=config,
          options=BuildOptions(workers=args.workers, overwrite=True, progress=False))
    elapsed = time.perf_counter() - start

    with open(out / "removed.csv", newline="") as f:
        leaks = [row for row in csv.DictReader(f) if row["reason"] == "evaluation image"]

    def counts(accept: float):
        caught = {k: 0 for k in kinds}
        by_rule: dict[str, int] = {}
        false = []
        for row in leaks:
            if row["rule"] == "aligned" and float(row["score"]) < accept:
                continue
            key = row["source_id"]
            if key in planted:
                caught[key.split("-", 2)[1]] += 1
                by_rule[row["rule"]] = by_rule.get(row["rule"], 0) + 1
            else:
                false.append(row)
        return caught, by_rule, false

    # Which false removals are bio-mini's own duplicates (the same image up to resampling)?
    def key_of(origin: str) -> str:
        return origin.rsplit("/", 1)[1].rsplit(".", 1)[0]

    all_false = [row for row in leaks if row["source_id"] not in planted]
    photos = images_of([train_dir / "train-000.tar", eval_dir / "eval-000.tar"],
                       {key_of(r["origin"]) for r in all_false} | {key_of(r["matched"]) for r in all_false})
    for row in all_false:
        row["psnr"] = f"{same_image_psnr(photos[key_of(row['origin'])], photos[key_of(row['matched'])]):.1f}"

    def split_false(rows: list[dict]) -> str:
        same = sum(float(r["psnr"]) >= SAME_IMAGE_PSNR for r in rows)
        distinct = len(rows) - same
        return (f"{len(rows) / max(1, n_train):.5f} ({len(rows)}/{n_train}) raw; {distinct / max(1, n_train):.5f} "
                f"({distinct}) without the {same} pairs that are the same image up to resampling")

    caught, by_rule, false = counts(default_accept)
    with open(work / "false_removals.csv", "w", newline="") as f:  # at the default threshold
        w = csv.DictWriter(f, fieldnames=["origin", "matched", "rule", "score", "psnr"], extrasaction="ignore")
        w.writeheader()
        w.writerows(false)
    print(f"evaluation photos: {n_eval}; training photos: {n_train}; build {elapsed:.0f} s "
          f"(noisy: shared machine); workdir {work}")
    for kind in kinds:
        print(f"  planted {kind:<10} recall {caught[kind] / n_eval:.4f} ({caught[kind]}/{n_eval})")
    print(f"  rules that caught planted copies: {by_rule}")
    print(f"  false removals of bio-mini training photos: {split_false(false)} "
          f"(PSNR >= {SAME_IMAGE_PSNR:.0f} dB at 64x64); listed in {work / 'false_removals.csv'}")
    print("  aligned-rule threshold sweep (recall per transform; false removals):")
    for accept in sweep:
        c, _, f = counts(accept)
        recalls = " ".join(f"{k}={c[k] / n_eval:.4f}" for k in kinds)
        print(f"    accept {accept:.2f}: {recalls}; false {split_false(f)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
