"""The bundled camera-trap detector measured on real frames, and the conversion of its weights.

    python bench/bench_detector.py                       # accuracy + speed tables (Markdown)
    python bench/bench_detector.py --sizes 416,640 --flip --composites 40   # what docs/camtrap.md reports
    python bench/bench_detector.py --peer-zamba WHEEL    # + zamba's own MegadetectorLiteYoloX, side by side
    python bench/bench_detector.py --convert WHEEL [--out DIR]   # re-derive the bundled weights

Accuracy uses the Camtrap DP 1.0.2 example (../shared/standards/camtrap-dp-1.0.2/example):
media-level human annotations of the frames present in media/ (observationType, boxes).
- box recall / precision: one-to-one greedy matches at IoU >= 0.5 between annotated boxes and
  detections >= threshold (precision counts every detection on the annotated frames);
- false alarms: blank frames with any detection >= threshold. The example's media/ holds no
  annotated blank frame, so proxies are reported, and named as such: real background crops
  (the part of each annotated frame above / left of its animal box, which the annotator saw
  and left unboxed) and synthetic frames (uniform greys, black, white, noise);
- composites (--composites N, needs ../shared/data/bio-mini): N real animal photos (mammals,
  birds, reptiles from bio-mini's caltech, lemurs and chile-birds sets) and N plant photos
  (caltech, flowers17), greyscale like the night frames, pasted into the annotated frames left
  of the heron: "found" is a detection mostly (>= 50 % of its area) on the pasted photo. Another
  scene content than the one heron, but pasted photos, not camera-trap animals: a proxy.
- --flip: test-time flip (each frame and its mirror image, boxes merged by NMS).
Speed: photos/s of detect() on decoded 2048x1440 frames, batch 8, in this process, alternating
with the peer (zamba's code from its wheel) when --peer-zamba is given.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from taxoclip.camtrap.detector import YoloxDetector, bundle_dir, convert_zamba_wheel  # noqa: E402

EXAMPLE = ROOT.parent / "shared" / "standards" / "camtrap-dp-1.0.2" / "example"
IOU = 0.5


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w, h = max(0.0, min(ax2, bx2) - max(a[0], b[0])), max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(truth: list, boxes: list) -> int:
    """Greedy one-to-one matches at IoU >= 0.5 (detections are most confident first)."""
    free, n = list(truth), 0
    for b in boxes:
        scores = [iou(b, t) for t in free]
        if scores and max(scores) >= IOU:
            free.pop(int(np.argmax(scores)))
            n += 1
    return n


def load_example(example: Path):
    """(animal frames: [(name, image, [boxes])], blank frames: [(name, image)]) from the annotations."""
    media = {r["mediaID"]: r["fileName"] for r in csv.DictReader(open(example / "media.csv", newline=""))}
    present = {p.name for p in (example / "media").iterdir()}
    kinds: dict[str, set] = {}
    boxes: dict[str, list] = {}
    for r in csv.DictReader(open(example / "observations.csv", newline="")):
        name = media.get(r["mediaID"])
        if r["observationLevel"] != "media" or name not in present:
            continue
        kinds.setdefault(name, set()).add(r["observationType"])
        if r["bboxX"]:
            boxes.setdefault(name, []).append(tuple(float(r[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")))
    animals, blanks = [], []
    for name in sorted(kinds):
        img = Image.open(example / "media" / name).convert("RGB")
        if "animal" in kinds[name]:
            animals.append((name, img, boxes.get(name, [])))
        elif kinds[name] == {"blank"}:
            blanks.append((name, img))
    return animals, blanks


def background_crops(animals) -> list:
    """Real, animal-free parts of the annotated frames: above and left of every animal box."""
    crops = []
    for name, img, boxes in animals:
        if not boxes:
            continue
        W, H = img.size
        top = min(b[1] for b in boxes) - 0.02
        left = min(b[0] for b in boxes) - 0.02
        if top >= 0.2:
            crops.append((f"{name}[top]", img.crop((0, 0, W, int(top * H)))))
        if left >= 0.2:
            crops.append((f"{name}[left]", img.crop((0, 0, int(left * W), H))))
    return crops


def synthetic_blanks() -> list:
    noise = np.random.default_rng(0).integers(0, 256, (1440, 2048, 3), dtype=np.uint8)
    levels = (0, 60, 90, 128, 150, 255)  # black, greys, white
    return [(f"uniform {v}", Image.new("RGB", (2048, 1440), (v, v, v))) for v in levels] + \
        [("noise", Image.fromarray(noise))]


def composites(animals, bio_mini: Path, n: int, seed: int = 0) -> list:
    """(kind "animal" | "plant", frame, pasted box) for n animal and n plant photos pasted into the
    annotated frames, left of the heron (see the module docstring)."""
    import io
    import random
    import tarfile

    def samples(path):
        items: dict = {}
        with tarfile.open(path) as t:
            for m in t.getmembers():
                key, _, ext = m.name.rpartition(".")
                items.setdefault(key, {})[ext] = t.extractfile(m).read()
        return [(json.loads(v["json"]), v["jpg"]) for v in items.values() if "json" in v and "jpg" in v]

    pools: dict[str, list] = {"animal": [], "plant": []}
    for name in ("caltech/test-000.tar", "caltech/val-000.tar", "lemurs/val-000.tar", "chile-birds/val-000.tar",
                 "flowers17/test-000.tar", "flowers17/val-000.tar"):
        if not (bio_mini / name).is_file():
            continue
        for label, jpg in samples(bio_mini / name):
            if label["kingdom"] == "Animalia" and label["class"] in ("Mammalia", "Aves", "Reptilia", "Amphibia"):
                pools["animal"].append(jpg)
            elif label["kingdom"] == "Plantae":
                pools["plant"].append(jpg)
    rng = random.Random(seed)
    out = []
    for kind, pool in pools.items():
        rng.shuffle(pool)
        for i, jpg in enumerate(pool[:n]):
            _, frame, boxes = animals[i % len(animals)]
            bg = frame.resize((1024, 720), Image.BICUBIC)
            patch = Image.open(io.BytesIO(jpg)).convert("L").convert("RGB")
            s = rng.uniform(0.12, 0.25) * 1024 / max(patch.size)
            patch = patch.resize((max(1, round(patch.size[0] * s)), max(1, round(patch.size[1] * s))), Image.BICUBIC)
            x = rng.uniform(10, max(11, boxes[0][0] * 1024 - patch.size[0] - 10))
            y = rng.uniform(40, 720 - patch.size[1] - 40)
            bg.paste(patch, (int(x), int(y)))
            out.append((kind, bg, (int(x) / 1024, int(y) / 720, patch.size[0] / 1024, patch.size[1] / 720)))
    return out


def on_patch(det_box, patch) -> bool:
    """Whether a detection lies mostly (>= half its area) on the pasted photo."""
    x, y, w, h = det_box
    px, py, pw, ph = patch
    ix = max(0.0, min(x + w, px + pw) - max(x, px))
    iy = max(0.0, min(y + h, py + ph) - max(y, py))
    return ix * iy >= 0.5 * w * h


class Flipped:
    """Test-time flip: detections of each frame and of its mirror image, merged by NMS."""

    def __init__(self, det):
        self.det = det

    def detect(self, images, threshold: float):
        import torch
        from PIL import ImageOps
        from torchvision.ops import nms

        from taxoclip.camtrap.results import Detection

        plain = self.det.detect(images, threshold=threshold)
        mirrored = self.det.detect([ImageOps.mirror(im) for im in images], threshold=threshold)
        out = []
        for a, b in zip(plain, mirrored):
            both = a + [Detection(d.category, d.conf, (1 - d.bbox[0] - d.bbox[2], *d.bbox[1:])) for d in b]
            if not both:
                out.append([])
                continue
            xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d.bbox for d in both)])
            keep = nms(xyxy, torch.tensor([d.conf for d in both]), self.det.nms_iou)
            out.append(sorted((both[k] for k in keep.tolist()), key=lambda d: -d.conf))
        return out


def accuracy_rows(det, animals, crops, synth, comp, thresholds, label: str) -> tuple[list[str], float | None]:
    """Table rows per threshold, and how well the best score on a pasted photo ranks the animal
    photos above the plant ones (AUROC, thresholds aside; None without composites)."""
    lowest = min(thresholds)
    found_a = det.detect([im for _, im, _ in animals], threshold=lowest)
    found_c = det.detect([im for _, im in crops], threshold=lowest)
    found_s = det.detect([im for _, im in synth], threshold=lowest)
    found_p = det.detect([im for _, im, _ in comp], threshold=0.001) if comp else []
    score = {kind: np.array([max((d.conf for d in f if on_patch(d.bbox, box)), default=0.0)
                             for (k, _, box), f in zip(comp, found_p) if k == kind]) for kind in ("animal", "plant")}
    auroc = None
    if comp:
        a, p = score["animal"][:, None], score["plant"][None, :]
        auroc = float((a > p).mean() + 0.5 * (a == p).mean())
    rows = []
    n_truth = sum(len(b) for _, _, b in animals)
    for t in thresholds:
        a = [[d for d in f if d.conf >= t] for f in found_a]  # = detect() at t: NMS keeps in score order
        matched = sum(match(b, [d.bbox for d in f if d.category == "animal"]) for (_, _, b), f in zip(animals, a))
        n_det = sum(len(f) for f in a)

        def fa(found):
            return f"{sum(any(d.conf >= t for d in f) for f in found)}/{len(found)}"

        def pasted(kind):
            hits = [any(d.conf >= t and on_patch(d.bbox, box) for d in f)
                    for (k, _, box), f in zip(comp, found_p) if k == kind]
            return f"{sum(hits)}/{len(hits)}" if hits else "–"

        rows.append(f"| {label} | {t:g} | {matched}/{n_truth} | {matched}/{n_det} | {fa(found_c)} | {fa(found_s)} | "
                    f"{pasted('animal')} | {pasted('plant')} |")
    return rows, auroc


def best_scores(det, animals) -> str:
    """The score of the best detection overlapping the annotated box, per frame (0 when none does)."""
    found = det.detect([im for _, im, _ in animals], threshold=0.001)
    out = []
    for (_, _, boxes), f in zip(animals, found):
        on = [d.conf for d in f if boxes and max(iou(d.bbox, b) for b in boxes) >= IOU]
        out.append(f"{max(on, default=0.0):.3f}")
    return ", ".join(out)


# ----------------------------------------------------------------------------- zamba's own code, as a peer


def zamba_peer(wheel: Path, workdir: Path, confidence: float, batch: int):
    """zamba's MegadetectorLiteYoloX run from the wheel's files (zamba itself is not installed:
    its package __init__ is replaced by an empty one, the yolox it imports is pixeltable-yolox)."""
    with zipfile.ZipFile(wheel) as zf:
        for n in zf.namelist():
            if n.startswith("zamba/object_detection/"):
                zf.extract(n, workdir)
    (workdir / "zamba" / "__init__.py").write_text("")
    sys.path.insert(0, str(workdir))
    from zamba.object_detection.yolox.megadetector_lite_yolox import MegadetectorLiteYoloX

    # its loader calls torch.load(weights_only=False) on the wheel's .pth, which loads with
    # weights_only=True too (convert_zamba_wheel does), so it holds nothing but tensors
    return MegadetectorLiteYoloX(config={"confidence": confidence, "nms_threshold": 0.45, "device": "cpu",
                                         "frame_batch_size": batch})


def parity(det, peer, animals, threshold: float) -> str:
    bundled, det.size = det.size, 640  # zamba's square
    ours = det.detect([im for _, im, _ in animals], threshold=threshold)
    det.size = bundled
    d_score, d_box, n_ours, n_peer = 0.0, 0.0, 0, 0
    for (_, im, _), mine in zip(animals, ours):
        boxes, scores = peer.detect_image(np.asarray(im))
        order = np.argsort(-np.asarray(scores)) if len(scores) else []
        theirs = [(float(scores[i]), boxes[i]) for i in order]
        n_ours, n_peer = n_ours + len(mine), n_peer + len(theirs)
        for d, (s, b) in zip(mine, theirs):
            x1, y1, x2, y2 = (float(v) for v in b)
            ref = (max(0.0, x1), max(0.0, y1), min(1.0, x2) - max(0.0, x1), min(1.0, y2) - max(0.0, y1))
            d_score = max(d_score, abs(d.conf - s))
            d_box = max(d_box, max(abs(p - q) for p, q in zip(d.bbox, ref)))
    return (f"detections >= {threshold:g}: ours {n_ours}, zamba {n_peer}; max |score diff| {d_score:.4f}, "
            f"max |box diff| {d_box:.4f} (normalised)")


# ----------------------------------------------------------------------------- speed


def speed(det, peer, frames: list, rounds: int, sizes: list[int]) -> tuple[dict, float | None]:
    """Best-of-rounds photos/s per letterbox size, ours and the peer's alternating (the CPU is shared)."""
    bundled = det.size
    det.detect(frames[:2])
    video = np.stack([np.asarray(f) for f in frames]) if peer else None
    if peer:
        peer.detect_video(video[:2])
    ours, theirs = {s: [] for s in sizes}, []
    for _ in range(rounds):
        for size in sizes:
            det.size = size
            t = time.perf_counter()
            det.detect(frames, threshold=0.1)
            ours[size].append(len(frames) / (time.perf_counter() - t))
        det.size = 640  # the peer's
        if peer:
            t = time.perf_counter()
            peer.detect_video(video)
            theirs.append(len(frames) / (time.perf_counter() - t))
    det.size = bundled
    return {s: max(v) for s, v in ours.items()}, (max(theirs) if theirs else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--convert", metavar="WHEEL", help="re-derive the bundled weights from a zamba wheel")
    ap.add_argument("--out", help="where --convert writes (default: a temporary folder, compared with the bundle)")
    ap.add_argument("--example", default=str(EXAMPLE), help="a Camtrap DP package with media/ (default: %(default)s)")
    ap.add_argument("--thresholds", default="0.02,0.05,0.1,0.2")
    ap.add_argument("--sizes", default="416,640", help="letterbox sizes to compare (the bundle's: 416; zamba's: 640)")
    ap.add_argument("--flip", action="store_true", help="also measure test-time flip at each size")
    ap.add_argument("--composites", type=int, default=0, metavar="N",
                    help="also N animal and N plant photos from bio-mini pasted into the frames (see above)")
    ap.add_argument("--bio-mini", default=str(ROOT.parent / "shared" / "data" / "bio-mini"))
    ap.add_argument("--no-speed", action="store_true", help="accuracy tables only")
    ap.add_argument("--speed-frames", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peer-zamba", metavar="WHEEL", help="also run zamba's own detector code from this wheel")
    args = ap.parse_args(argv)

    if args.convert:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="yolox-tiny-"))
        path = convert_zamba_wheel(args.convert, out)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        want = json.loads((bundle_dir() / "config.json").read_text())["weights_sha256"]
        print(f"{path}: sha256 {sha}\nbundled config.json: {want}\n" + ("identical" if sha == want else "DIFFERENT"))
        return 0 if sha == want else 1

    import torch

    example = Path(args.example)
    if not (example / "observations.csv").is_file():
        print(f"no Camtrap DP example at {example}", file=sys.stderr)
        return 2
    thresholds = [float(t) for t in args.thresholds.split(",")]
    animals, blanks = load_example(example)
    crops, synth = background_crops(animals), synthetic_blanks()
    comp = composites(animals, Path(args.bio_mini), args.composites) if args.composites else []
    det = YoloxDetector(device="cpu")
    bundled = det.size
    print(f"# {det.name} {det.version}\n\n{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads, load average at start {os.getloadavg()[0]:.2f}\n")
    print(f"Camtrap DP example: {len(animals)} annotated animal frames ({sum(len(b) for *_, b in animals)} boxes), "
          f"{len(blanks)} annotated blank frames in media/; {len(crops)} background crops, {len(synth)} synthetic "
          f"blanks; {sum(k == 'animal' for k, _, _ in comp)} + {sum(k == 'plant' for k, _, _ in comp)} "
          "composites (animal + plant photos)\n")
    print("| input | threshold | box recall (IoU>=0.5) | box precision | FA: background crops | FA: synthetic "
          "| composites: animals found | composites: plants boxed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    sizes = [int(s) for s in args.sizes.split(",")]
    best, ranking = {}, {}
    for size in sizes:
        det.size = size  # only the letterbox uses it: the network is fully convolutional
        label = f"{size}px" + (" (bundled)" if size == bundled else "")
        rows, ranking[label] = accuracy_rows(det, animals, crops, synth, comp, thresholds, label)
        if args.flip:
            flipped, ranking[f"{size}px + flip"] = accuracy_rows(Flipped(det), animals, crops, synth, comp,
                                                                 thresholds, f"{size}px + flip")
            rows += flipped
        print("\n".join(rows))
        best[size] = best_scores(det, animals)
    det.size = bundled
    print()
    for size, s in best.items():
        print(f"- best score on the annotated box per frame, {size}px: {s}")
    if comp:
        print("- composites, animal photos ranked above plant photos by the best score on them (AUROC, 0.5 = "
              "chance): " + ", ".join(f"{k} {v:.2f}" for k, v in ranking.items()))

    peer = None
    if args.peer_zamba:
        peer = zamba_peer(Path(args.peer_zamba), Path(tempfile.mkdtemp(prefix="zamba-")), min(thresholds),
                          det.batch_size)
        print(f"- parity with zamba's MegadetectorLiteYoloX at 640 px (fp32 .pth, ImageOps.pad, yolox postprocess): "
              f"{parity(det, peer, animals, min(thresholds))}")

    if args.no_speed:
        return 0
    src = [im if im.size == (2048, 1440) else im.resize((2048, 1440)) for _, im, _ in animals]
    src = src or [Image.new("RGB", (2048, 1440))]
    frames = [src[i % len(src)] for i in range(args.speed_frames)]
    paths = [example / "media" / n for n, _, _ in animals]
    t = time.perf_counter()
    for p in paths:
        Image.open(p).convert("RGB")
    decode = len(paths) / (time.perf_counter() - t) if paths else float("nan")
    ours, theirs = speed(det, peer, frames, args.rounds, sizes)
    print(f"\n| 2048x1440 frames, CPU, batch {det.batch_size} | photos/s |\n|---|---:|")
    for size, v in ours.items():
        print(f"| taxoclip yolox-tiny detect(), {size}px{' (bundled)' if size == bundled else ''} | {v:.2f} |")
    if theirs is not None:
        print(f"| zamba MegadetectorLiteYoloX.detect_video, 640px (peer) | {theirs:.2f} "
              f"(ours at 640px x{ours.get(640, float('nan')) / theirs:.2f}) |")
    print(f"| JPEG decode alone (PIL, for scale) | {decode:.2f} |")
    print(f"\nbest of {args.rounds} rounds of {len(frames)} frames; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
