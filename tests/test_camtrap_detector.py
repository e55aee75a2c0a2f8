"""The camera-trap detector: the bundled YOLOX-tiny finds the Camtrap DP example's heron offline,
boxes come back normalised to the original frame, odd frames work, and the registry says what it has."""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import taxoclip

from taxoclip.camtrap.detector import (DETECTORS, Detector, YoloxDetector, bundle_dir, convert_zamba_wheel,
                                       load_detector, megadetector_runtime)
from taxoclip.camtrap.results import DETECTION_CATEGORIES, Detection
from taxoclip.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLE = SHARED / "standards" / "camtrap-dp-1.0.2" / "example"
ZAMBA_WHEEL = Path("/tmp/zw/zamba-2.7.2-py3-none-any.whl")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w, h = max(0.0, min(ax2, bx2) - max(a[0], b[0])), max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _assert_boxes_inside(dets: list[Detection]):
    for d in dets:
        x, y, w, h = d.bbox
        assert d.category in DETECTION_CATEGORIES.values()
        assert 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 and w > 0 and h > 0
        assert x + w <= 1.0 + 1e-6 and y + h <= 1.0 + 1e-6


@pytest.fixture(scope="module")
def detector() -> Detector:
    """The default detector, loaded with the network cut off."""
    def no_network(*a, **k):
        raise AssertionError("the bundled detector must not touch the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        return load_detector()


@pytest.fixture(scope="module")
def example_frames() -> list[tuple[str, Image.Image, tuple]]:
    """(file name, frame, annotated [x, y, w, h]) for each example frame with a media-level box."""
    if not (EXAMPLE / "observations.csv").is_file():
        pytest.skip(f"Camtrap DP example not found at {EXAMPLE}")
    media = {r["mediaID"]: r["fileName"] for r in csv.DictReader(open(EXAMPLE / "media.csv", newline=""))}
    out = []
    for r in csv.DictReader(open(EXAMPLE / "observations.csv", newline="")):
        path = EXAMPLE / "media" / media.get(r["mediaID"], "?")
        if r["observationLevel"] == "media" and r["observationType"] == "animal" and r["bboxX"] and path.is_file():
            box = tuple(float(r[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight"))
            out.append((path.name, Image.open(path).convert("RGB"), box))
    assert out, "the example's media/ has no annotated frame"
    return sorted(out)


def test_bundled_detector_is_the_default(detector):
    assert isinstance(detector, Detector) and isinstance(detector, YoloxDetector)
    assert (detector.name, detector.version) == ("yolox-tiny-animals", "zamba-2.7.2/yolox_tiny_640_20220528")
    assert detector.categories == ("animal",)  # MegadetectorLite has one class
    assert detector.size == 416  # letterbox: found more herons, fewer false alarms than zamba's 640 (docs)
    assert 0 < detector.metadata["conservative_detection_threshold"] < detector.metadata["typical_detection_threshold"]
    assert bundle_dir().is_relative_to(Path(taxoclip.__file__).parent)
    assert sorted(DETECTORS) == ["megadetector", "yolox-tiny"]


@pytest.fixture(scope="module")
def example_found(detector, example_frames) -> list[list[Detection]]:
    """Detections above 0.02 on the example frames, then on the first one as greyscale (one batch run).

    Filtering them at a higher threshold gives what detect() at that threshold gives: NMS keeps
    boxes in score order, so a box is only ever suppressed by a more confident one."""
    frames = [f for _, f, _ in example_frames]
    return detector.detect(frames + [frames[0].convert("L")], threshold=0.02)


def test_finds_the_heron_in_the_example(detector, example_frames, example_found):
    """Night IR frames of a grey heron, at the detector's typical threshold: the annotated box is
    found on most frames (6 of 10 measured, docs/camtrap.md) and nothing else is boxed."""
    names, _, truth = zip(*example_frames)
    typical = detector.metadata["typical_detection_threshold"]
    found = [[d for d in dets if d.conf >= typical] for dets in example_found[:len(names)]]
    for dets in example_found:
        _assert_boxes_inside(dets)
        assert [d.conf for d in dets] == sorted((d.conf for d in dets), reverse=True)
    on_heron = [[_iou(d.bbox, box) >= 0.5 for d in dets] for dets, box in zip(found, truth)]
    assert sum(any(hit) for hit in on_heron) >= 5
    assert all(all(hit) for hit in on_heron)  # no false alarm on the background (water, reeds, the text bar)


def test_greyscale_frame_gives_the_same_boxes(example_found):
    """A night IR frame stored as greyscale gets the boxes of its RGB copy: scores differ by rounding
    (a box within rounding of the 0.02 threshold may be on one side of it in one copy only)."""
    rgb, grey = example_found[0], example_found[-1]
    assert sum(d.conf >= 0.025 for d in rgb) >= 2
    for ours, theirs in ((rgb, grey), (grey, rgb)):
        for d in ours:
            twin = max(theirs, key=lambda g: _iou(g.bbox, d.bbox), default=None)
            if d.conf >= 0.025:
                assert twin is not None and _iou(twin.bbox, d.bbox) > 0.98 and abs(twin.conf - d.conf) < 0.005


def test_uniform_grey_frame_is_blank(detector):
    found = detector.detect([Image.new("RGB", (2048, 1440), (128, 128, 128))], threshold=0.5)
    assert found == [[]]


def test_odd_images_work(detector):
    sixteen = Image.fromarray(np.random.default_rng(0).integers(0, 60000, (64, 96), dtype=np.uint16))
    images = [Image.new("RGB", (7, 3), (90, 90, 90)), Image.new("L", (1, 900)), sixteen,
              Image.new("RGBA", (33, 65)), Image.new("RGB", (0, 0))]
    found = detector.detect(images, threshold=0.0)  # everything that survives NMS
    assert len(found) == len(images)
    for dets in found:
        _assert_boxes_inside(dets)
    assert found[-1] == [] and detector.detect([]) == []


def test_boxes_are_relative_to_the_original_frame(detector):
    """The letterbox puts a 2048x1440 frame in the top-left 640x450 of the square: undo it."""
    import torch

    fake = copy.copy(detector)  # the same detector with a network that answers one fixed box
    fake.size = 640
    # cx, cy, w, h in square pixels; objectness; class probability
    fake.model = lambda x: torch.tensor([[[320.0, 225.0, 64.0, 45.0, 0.9, 0.5],
                                          [630.0, 440.0, 40.0, 40.0, 0.9, 0.9],  # over the right/bottom edge
                                          [320.0, 600.0, 20.0, 20.0, 0.9, 0.9]]]).expand(x.shape[0], -1, -1)
    (dets,) = fake.detect([Image.new("RGB", (2048, 1440))], threshold=0.1)
    assert [d.conf for d in dets] == pytest.approx([0.81, 0.45])  # the one in the padding is gone
    assert np.allclose(dets[1].bbox, (0.45, 0.45, 0.1, 0.1), atol=1e-6)
    x, y, w, h = dets[0].bbox
    assert np.allclose((x, y), (610 / 640, 420 / 450)) and np.isclose(x + w, 1.0) and np.isclose(y + h, 1.0)


def test_unknown_detector_lists_the_names():
    with pytest.raises(InputError, match="yolox-tiny.*megadetector"):
        load_detector("megadetectr")


def test_megadetector_without_its_runtime(monkeypatch):
    for name in ("megadetector", "yolov5", "yolov9", "ultralytics"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(InputError, match="pip install megadetector"):
        load_detector("megadetector", weights="md_v5a.0.0.pt")


def test_megadetector_code_without_a_yolo_library(monkeypatch):
    """megadetector-utils alone (the dev extra) has MegaDetector's code but nothing to run its weights."""
    pytest.importorskip("megadetector.detection.run_detector")
    for name in ("yolov5", "yolov9", "ultralytics"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(InputError, match="no YOLO library.*pip install megadetector"):
        load_detector("megadetector", weights="md_v5a.0.0.pt")


def _module(name: str, **attrs):
    import importlib.machinery
    import types

    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    m.__path__ = []  # a package, so submodules can be found under it
    m.__dict__.update(attrs)
    return m


@pytest.fixture
def stub_megadetector(monkeypatch):
    """MegaDetector's runtime as its API looks (run_detector.load_detector -> an object with
    generate_detections_one_image returning {'file', 'detections' | 'failure'}), answering set boxes."""
    from PIL import ImageFile

    loaded = {}

    class StubPTDetector:
        def __init__(self, answers):
            self.answers = answers

        def generate_detections_one_image(self, img, image_id="unknown", detection_threshold=1e-5):
            assert img.mode == "RGB"
            answer = self.answers[img.size]
            if "failure" in answer:
                return {"file": image_id, "failure": answer["failure"], "detections": None}
            found = [d for d in answer["detections"] if d["conf"] >= detection_threshold]
            return {"file": image_id, "detections": found}

    def load(model_file, force_cpu=False, **kwargs):
        ImageFile.LOAD_TRUNCATED_IMAGES = True  # as MegaDetector's imports do
        loaded.update(file=model_file, force_cpu=force_cpu)
        if Path(model_file).read_bytes() == b"not a model":
            raise RuntimeError("PytorchStreamReader failed reading zip archive")
        return StubPTDetector(loaded["answers"])

    run_detector = _module("megadetector.detection.run_detector", load_detector=load,
                           DEFAULT_DETECTOR_LABEL_MAP={"1": "animal", "2": "person", "3": "vehicle"})
    detection = _module("megadetector.detection", run_detector=run_detector)
    monkeypatch.setitem(sys.modules, "megadetector", _module("megadetector", detection=detection))
    monkeypatch.setitem(sys.modules, "megadetector.detection", detection)
    monkeypatch.setitem(sys.modules, "megadetector.detection.run_detector", run_detector)
    monkeypatch.setitem(sys.modules, "yolov5", _module("yolov5"))
    return loaded


def test_megadetector_results_become_detections(stub_megadetector, tmp_path):
    """Its category ids become names, boxes stay normalised (clipped where they overhang),
    the most confident comes first, a category it does not define is left out."""
    from PIL import ImageFile

    weights = tmp_path / "md_v5a.0.0.pt"
    weights.write_bytes(b"weights")
    stub_megadetector["answers"] = {(640, 480): {"detections": [
        {"category": "1", "conf": 0.31, "bbox": [0.1, 0.2, 0.3, 0.4]},
        {"category": "2", "conf": 0.92, "bbox": [0.5, 0.5, 0.6, 0.2]},  # overhangs the right edge
        {"category": "3", "conf": 0.05, "bbox": [0.0, 0.0, 0.1, 0.1]},  # below the threshold
        {"category": "7", "conf": 0.8, "bbox": [0.1, 0.1, 0.1, 0.1]},  # not a MegaDetector category
    ]}}
    d = load_detector("megadetector", weights=str(weights), device="cpu")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # truncated photos stay errors after loading it
    assert (stub_megadetector["file"], stub_megadetector["force_cpu"]) == (str(weights.resolve()), True)
    assert d.name == "megadetector" and d.version.startswith("md_v5a.0.0.pt sha256:")
    (dets,) = d.detect([Image.new("L", (640, 480))], threshold=0.1)
    assert [(x.category, x.conf) for x in dets] == [("person", 0.92), ("animal", 0.31)]
    assert dets[0].bbox == pytest.approx((0.5, 0.5, 0.5, 0.2)) and dets[1].bbox == pytest.approx((0.1, 0.2, 0.3, 0.4))


def test_megadetector_failing_one_frame_fails_only_that_frame(stub_megadetector, tmp_path):
    from taxoclip.camtrap import detect_frames

    weights = tmp_path / "md_v6.pt"
    weights.write_bytes(b"weights")
    stub_megadetector["answers"] = {(64, 48): {"detections": [{"category": "1", "conf": 0.9, "bbox": [0, 0, 1, 1]}]},
                                    (32, 32): {"failure": "inference failure"}}
    paths = []
    for name, size in (("a.jpg", (64, 48)), ("b.jpg", (32, 32)), ("c.jpg", (64, 48))):
        Image.new("RGB", size).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    frames = list(detect_frames(paths, load_detector("megadetector", weights=str(weights)), root=str(tmp_path)))
    assert [f.file for f in frames] == ["a.jpg", "b.jpg", "c.jpg"]
    assert "inference failure" in frames[1].failure and frames[1].detections is None
    assert [[d.category for d in f.detections] for f in (frames[0], frames[2])] == [["animal"], ["animal"]]


def test_megadetector_weights_it_cannot_load_name_the_file(stub_megadetector, tmp_path):
    bad = tmp_path / "md_v5b.0.0.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"md_v5b\.0\.0\.pt: MegaDetector cannot load it .*zip archive"):
        load_detector("megadetector", weights=str(bad))
    with pytest.raises(InputError, match="missing.pt: no such MegaDetector weights file"):
        load_detector("megadetector", weights=str(tmp_path / "missing.pt"))
    with pytest.raises(InputError, match="needs a weights file: --detector-weights"):
        load_detector("megadetector")


MD_WEIGHTS = os.environ.get("TAXOCLIP_MD_WEIGHTS", "")


@pytest.mark.skipif(not (megadetector_runtime() and Path(MD_WEIGHTS).is_file()),
                    reason="needs MegaDetector's runtime (pip install megadetector) and "
                           "TAXOCLIP_MD_WEIGHTS=md_v5a.0.0.pt")
def test_real_megadetector_finds_the_heron(example_frames):
    from PIL import ImageFile

    d = load_detector("megadetector", weights=MD_WEIGHTS, device="cpu")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    names, frames, truth = zip(*example_frames)
    found = d.detect(list(frames[:3]), threshold=0.2)
    for dets, box in zip(found, truth):
        _assert_boxes_inside(dets)
        assert any(x.category == "animal" and _iou(x.bbox, box) >= 0.5 for x in dets)


def test_other_weights_on_the_same_network(tmp_path):
    """A weights file (e.g. retrained YOLOX-tiny) runs with the bundle's config, named by its content."""
    weights = tmp_path / "retrained.safetensors"
    shutil.copy(bundle_dir() / "model.safetensors", weights)
    d = load_detector("yolox-tiny", weights=str(weights), device="cpu")
    assert d.name == "retrained" and d.version == _sha256(weights)[:12]
    with pytest.raises(InputError, match="no such"):
        load_detector("yolox-tiny", weights=str(tmp_path / "missing.pth"))


def test_damaged_weights_name_the_file(tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(bundle_dir(), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="model.safetensors"):
        YoloxDetector(folder, device="cpu")


@pytest.mark.skipif(not ZAMBA_WHEEL.is_file(), reason=f"zamba wheel not at {ZAMBA_WHEEL}")
def test_vendored_weights_are_the_wheels(tmp_path):
    """Anyone with the wheel re-derives the bundled files byte for byte."""
    made = convert_zamba_wheel(ZAMBA_WHEEL, tmp_path)
    bundle = bundle_dir()
    assert _sha256(made) == _sha256(bundle / "model.safetensors")
    assert _sha256(made) == json.loads((bundle / "config.json").read_text())["weights_sha256"]
    for name in ("LICENSE", "yolox_tiny_640_20220528_model_kwargs.json"):
        assert (tmp_path / name).read_bytes() == (bundle / name).read_bytes()
