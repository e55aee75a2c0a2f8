"""`taxoclip camtrap run` stage by stage on 2048x1440 camera-trap frames.

    python bench/bench_camtrap.py [--frames 32]

Frames: the Camtrap DP example's real night frames resized to 2048x1440 (JPEG q90), repeated
to --frames. Prints photos/s of each stage measured in this process (decode, detect, crop +
classify of the detections kept), and of the whole command in a child process (model and
detector loading included), on this machine's CPU, with the detector's default thresholds
(--threshold overrides both). Run it with PYTHONPATH=src so the child runs this checkout.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[2] / "shared/standards/camtrap-dp-1.0.2/example/media"


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--threshold", type=float, help="detection and classification threshold (default: the "
                                                    "detector's conservative / typical ones)")
    a = ap.parse_args()
    from taxoclip.camtrap import CropOptions, classify_frames, detect_frames
    from taxoclip.camtrap.detector import load_detector, thresholds_of
    from taxoclip.classify import TreeOfLifeClassifier
    from taxoclip.io.images import decode_image

    src = sorted(EXAMPLE.iterdir())
    d = Path(tempfile.mkdtemp(prefix="camtrap-bench-")) / "cam-1"
    d.mkdir(parents=True)
    for i in range(a.frames):
        Image.open(src[i % len(src)]).convert("RGB").resize((2048, 1440)).save(d / f"frame_{i:04d}.jpg", quality=90)
    paths = sorted(str(p) for p in d.iterdir())
    print(f"{len(paths)} frames of 2048x1440 on {cpu()} ({len(__import__('os').sched_getaffinity(0))} cores)")
    t = time.perf_counter()
    for p in paths:
        decode_image(p)
    dec = len(paths) / (time.perf_counter() - t)
    detector = load_detector("yolox-tiny")
    typical, conservative = (a.threshold, a.threshold) if a.threshold else thresholds_of(detector.metadata)
    detector.detect([decode_image(paths[0])])  # warm-up
    t = time.perf_counter()
    frames = list(detect_frames(paths, detector, threshold=conservative, root=str(d)))
    det = len(paths) / (time.perf_counter() - t)
    clf = TreeOfLifeClassifier("taxoclip-mini")
    t = time.perf_counter()
    classify_frames(frames, clf, root=str(d), options=CropOptions(threshold=typical))
    crops = sum(1 for f in frames for x in f.detections or [] if x.classifications)
    cls = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "taxoclip", "camtrap", "run", str(d), "-o", str(d.parent / "r.json"),
                    "--detection-threshold", str(conservative), "--classify-threshold", str(typical)],
                   check=True, capture_output=True)
    whole = time.perf_counter() - t
    print(f"\nthresholds: detection {conservative:g}, classification {typical:g}; load average "
          f"{__import__('os').getloadavg()[0]:.2f}")
    print("\n| stage | photos/s |\n|---|---:|")
    print(f"| decode (one core) | {dec:.1f} |")
    print(f"| detect (YOLOX-tiny, {detector.size} px letterbox, batch {detector.batch_size}, includes decode) "
          f"| {det:.2f} |")
    print(f"| crop + classify ({crops} crops, taxoclip-mini, 300K taxa) | {len(paths) / cls:.1f} "
          f"({crops / cls:.1f} crops/s) |")
    print(f"| whole `taxoclip camtrap run` (child process, loading included) | {len(paths) / whole:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
