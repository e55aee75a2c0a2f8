"""Finding animals (and, with MegaDetector, people and vehicles) in camera-trap frames, offline.

A detector turns PIL frames into `Detection`s with MegaDetector's conventions: a category
("animal", "person", "vehicle"), a confidence and a normalised `[x, y, w, h]` box relative to
the frame as given. `load_detector()` builds one by name from `DETECTORS`:

- `yolox-tiny` (default, bundled, no network): zamba's "MegadetectorLite", a YOLOX-tiny
  trained by DrivenData to find animals in camera-trap video frames (MIT; weights converted
  from the `zamba` 2.7.2 wheel, see `bundled/yolox-tiny-animals/README.md`). It has ONE class,
  so it never says "person" or "vehicle", and its scores run low: the box on the Camtrap DP
  example's night IR heron scores 0.0-0.17 (bench/bench_detector.py), so MegaDetector's
  usual thresholds (0.1-0.2) miss most animals; its config gives its own (`metadata`:
  typical 0.05, conservative 0.02). Its scores rank frames and boxes; they are not
  MegaDetector confidences. The network is pixeltable-yolox's YOLOX; the letterbox and
  decoding follow zamba's `MegadetectorLiteYoloX` (RGB 0-255, no normalisation, bicubic
  resize into the top-left of a black square), at 416 px instead of zamba's 640 (measured
  better on real night frames, docs/camtrap.md).
- `megadetector`: MegaDetector itself, from a weights file the user gives, through the
  `megadetector` package's own runtime when it is installed (not a dependency).

`convert_zamba_wheel()` re-derives the bundled weights from the zamba wheel, so anyone can
check them (bench/bench_detector.py --convert WHEEL).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from ..cache import file_sha256 as _sha256
from ..errors import InputError
from .results import DETECTION_CATEGORIES, Detection

__all__ = ["Detector", "YoloxDetector", "MegaDetector", "DETECTORS", "DEFAULT_DETECTOR", "load_detector",
           "bundle_dir", "convert_zamba_wheel", "megadetector_runtime", "md_detections", "thresholds_of", "to_rgb"]

DEFAULT_DETECTOR = "yolox-tiny"
# MegaDetector's own defaults for weights it does not know (run_detector.py)
MEGADETECTOR_METADATA = {"typical_detection_threshold": 0.2, "conservative_detection_threshold": 0.1}
BUNDLE = "yolox-tiny-animals"
CATEGORIES = tuple(DETECTION_CATEGORIES.values())  # animal, person, vehicle
MAX_DETECTIONS = 100  # per frame, after NMS
MAX_CANDIDATES = 2000  # per frame, before NMS (a threshold of 0 would otherwise keep all 8400 anchors)

# What the zamba wheel holds (zamba/object_detection/yolox/megadetector_lite_yolox.py)
ZAMBA_WEIGHTS = "zamba/object_detection/yolox/assets/yolox_tiny_640_20220528.pth"
ZAMBA_KWARGS = "zamba/object_detection/yolox/assets/yolox_tiny_640_20220528_model_kwargs.json"


@runtime_checkable
class Detector(Protocol):
    name: str  # e.g. "yolox-tiny-animals"
    version: str
    # as MegaDetector writes it in its batch files: typical_detection_threshold (boxes that count),
    # conservative_detection_threshold (lower: boxes worth writing for review), …
    metadata: dict

    def detect(self, images: Sequence[Image.Image], threshold: float = 0.1) -> list[list[Detection]]: ...


def bundle_dir() -> Path:
    """The bundled detector's folder inside the installed package (never a machine path)."""
    from ..models.loading import package_path

    try:
        return package_path(f"pkg:taxoclip/bundled/{BUNDLE}")
    except FileNotFoundError as e:
        raise InputError(f"{e}; reinstall taxoclip to restore the bundled detector") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB view of any frame: greyscale / night IR, palette, alpha, 16-bit and float."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit IR, floats: scale to 0-255
        a = np.asarray(image, dtype=np.float32)
        top = float(a.max()) if a.size else 0.0
        a = a * (255.0 / top) if top > 255.0 else a
        image = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


# ----------------------------------------------------------------------------- YOLOX-tiny


def _yolox_classes():
    """pixeltable-yolox's network classes (Megvii's `yolox` distribution names them differently)."""
    try:
        from yolox.models import YoloPafpn, YoloxHead, YoloxModule  # pixeltable-yolox
    except ImportError:
        try:
            from yolox.models import YOLOPAFPN as YoloPafpn, YOLOX as YoloxModule, YOLOXHead as YoloxHead
        except ImportError:
            raise InputError("the yolox-tiny detector needs pixeltable-yolox: pip install pixeltable-yolox") from None
    return YoloPafpn, YoloxHead, YoloxModule


def _build_yolox(arch: dict, num_classes: int):
    """YOLOX as its training code builds it (yolox.exp get_model: BatchNorm eps 1e-3)."""
    import torch

    Pafpn, Head, Module = _yolox_classes()
    in_channels = [256, 512, 1024]
    depth, width, act = arch["depth"], arch["width"], arch.get("act", "silu")
    depthwise = bool(arch.get("depthwise", False))
    model = Module(Pafpn(depth, width, in_channels=in_channels, depthwise=depthwise, act=act),
                   Head(num_classes, width, in_channels=in_channels, depthwise=depthwise, act=act))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = float(arch.get("bn_eps", 1e-3))
    return model


def _read_state_dict(path: Path) -> dict:
    """Weights from a .safetensors file or a YOLOX checkpoint (`torch.load(weights_only=True)`), as fp32."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else state
    except Exception as e:  # corrupt, truncated, or a pickle that needs code to load
        raise InputError(f"{path}: cannot read detector weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


class YoloxDetector:
    """A YOLOX detector described by a config.json (the bundled one by default).

    Frames of any size are letterboxed into one square (zamba's: resized to fit, top-left,
    padded), so a batch mixes sizes; boxes come back relative to each original frame. `size`
    overrides the config's square (416; zamba's 640: bench/bench_detector.py compares them)."""

    def __init__(self, weights: str | Path | None = None, device: str = "auto", batch_size: int | None = None,
                 config: str | Path | None = None, size: int | None = None):
        import torch

        from ..models.runtime import resolve_device

        cfg_path = Path(config) if config else None
        if weights is not None and Path(weights).is_dir():  # a folder laid out like the bundle
            folder = Path(weights)
            cfg_path = cfg_path or folder / "config.json"
        else:
            folder = bundle_dir()
            cfg_path = cfg_path or folder / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{cfg_path}: cannot read the detector config ({e})") from None
        if weights is None or Path(weights).is_dir():
            wpath = folder / cfg["weights"]
            if not wpath.is_file():
                raise InputError(f"{wpath}: detector weights are missing; restore the file (reinstall taxoclip)")
            if cfg.get("weights_sha256") and _sha256(wpath) != cfg["weights_sha256"]:
                raise InputError(f"{wpath}: damaged (sha256 differs from {cfg_path.name}); restore the file")
        else:
            wpath = Path(weights).expanduser()
            if not wpath.is_file():
                raise InputError(f"{wpath}: no such detector weights file")
        state = _read_state_dict(wpath)

        self.classes: tuple[str, ...] = tuple(cfg["classes"])
        n = next((v.shape[0] for k, v in state.items() if k.startswith("head.cls_preds.0.weight")), None)
        if n != len(self.classes):
            raise InputError(f"{wpath}: weights predict {n} classes but {cfg_path} names {len(self.classes)} "
                             f"({', '.join(self.classes)})")
        if unknown := sorted(set(self.classes) - set(CATEGORIES)):
            raise InputError(f"{cfg_path}: classes {unknown} are not detection categories {list(CATEGORIES)}")

        model = _build_yolox(cfg["architecture"], len(self.classes))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # unused in eval
        if missing or unexpected:
            raise InputError(f"{wpath}: weights do not fit {cfg['architecture']} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.eval().requires_grad_(False)  # inference only (and fusing then builds plain leaf weights)
        try:
            from yolox.utils import fuse_model

            model = fuse_model(model)  # conv+BN in one conv: same outputs, faster
        except ImportError:
            pass
        try:
            self.device = resolve_device(device)
        except ValueError as e:
            raise InputError(str(e)) from None
        self.model = model.to(self.device)

        inp = cfg["input"]
        self.size = int(size or inp["size"])  # the network is fully convolutional: any multiple of 32
        if self.size <= 0 or self.size % 32:
            raise InputError(f"detector input size {self.size} must be a positive multiple of 32")
        self.bgr = inp.get("channels", "RGB").upper() == "BGR"
        self.pad_value = int(inp.get("pad_value", 0))
        self.resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[inp.get("resample", "bicubic")]
        self.nms_iou = float(cfg.get("nms_iou", 0.45))
        if weights is None or Path(weights).is_dir():
            self.name, self.version = cfg["name"], cfg["version"]
        else:  # other weights on the bundle's architecture: named by their file and content
            self.name, self.version = wpath.stem, _sha256(wpath)[:12]
        self.metadata = {**cfg.get("detector_metadata", {}), "input_size": self.size}
        self.categories = tuple(c for c in CATEGORIES if c in self.classes)
        self.batch_size = batch_size or (32 if self.device.type == "cuda" else 8)
        self._torch = torch

    def __repr__(self) -> str:
        return f"YoloxDetector({self.name} {self.version}, {self.size}px, {self.device})"

    def letterbox(self, image: Image.Image) -> tuple[np.ndarray, int, int]:
        """(size x size x 3 uint8, content width, content height): resized to fit, top-left, padded."""
        image = to_rgb(image)
        w, h = image.size
        canvas = np.full((self.size, self.size, 3), self.pad_value, dtype=np.uint8)
        if w == 0 or h == 0:  # an empty frame: nothing to find
            return canvas, 0, 0
        r = min(self.size / w, self.size / h)
        nw, nh = min(self.size, max(1, round(w * r))), min(self.size, max(1, round(h * r)))
        canvas[:nh, :nw] = np.asarray(image.resize((nw, nh), self.resample))
        if self.bgr:
            canvas = np.ascontiguousarray(canvas[..., ::-1])
        return canvas, nw, nh

    def detect(self, images: Sequence[Image.Image], threshold: float = 0.1) -> list[list[Detection]]:
        """Detections above `threshold` (most confident first) for each frame, in batches."""
        out: list[list[Detection]] = []
        for s in range(0, len(images), self.batch_size):
            out.extend(self._detect_batch(images[s:s + self.batch_size], threshold))
        return out

    def _detect_batch(self, images: Sequence[Image.Image], threshold: float) -> list[list[Detection]]:
        torch = self._torch
        from torchvision.ops import batched_nms, box_convert

        boxed = [self.letterbox(im) for im in images]
        x = torch.from_numpy(np.stack([b[0] for b in boxed])).to(self.device)
        x = x.permute(0, 3, 1, 2).float()  # 0-255, no normalisation (YOLOX without `legacy`)
        with torch.inference_mode():
            pred = self.model(x).float().cpu()  # [B, anchors, 4 + 1 + classes]: cx cy w h (px), obj, cls
        results = []
        for p, (_, nw, nh) in zip(pred, boxed):
            if nw == 0:
                results.append([])
                continue
            scores, labels = (p[:, 5:] * p[:, 4:5]).max(dim=1)  # obj x cls, the best class per anchor
            keep = scores >= threshold
            if keep.sum() > MAX_CANDIDATES:
                keep = scores >= scores.topk(MAX_CANDIDATES).values[-1]
            boxes, scores, labels = box_convert(p[keep, :4], "cxcywh", "xyxy"), scores[keep], labels[keep]
            order = batched_nms(boxes, scores, labels, self.nms_iou)[:MAX_DETECTIONS]
            # undo the letterbox: the frame fills [0, nw) x [0, nh) of the square
            norm = boxes[order] / torch.tensor([nw, nh, nw, nh], dtype=boxes.dtype)
            norm = norm.clamp(0.0, 1.0)
            dets = []
            for (x1, y1, x2, y2), c, k in zip(norm.tolist(), scores[order].tolist(), labels[order].tolist()):
                if x2 > x1 and y2 > y1:  # a box wholly in the padding clips to nothing
                    dets.append(Detection(self.classes[k], c, (x1, y1, x2 - x1, y2 - y1)))
            results.append(dets)
        return results


# ----------------------------------------------------------------------------- MegaDetector


class MegaDetector:
    """MegaDetector (v5, v6, …) from a weights file the user gives, run by the `megadetector`
    package's own runtime (`run_detector.load_detector`: `.pt` YOLO files, `.pb`, RF-DETR `.pth`).

    Its runtime unpickles the model file (MegaDetector's format), so give it only files you trust.
    Category ids are named by the runtime's label map ("1" animal, "2" person, "3" vehicle);
    detections of any other category are left out, as MegaDetector's format says of unlisted ones.
    A frame the runtime fails on raises InputError (`detect_frames` then fails that frame only)."""

    categories = CATEGORIES

    def __init__(self, weights: str | Path, device: str = "auto"):
        from megadetector.detection import run_detector

        _strict_truncated_images()
        path = Path(weights).expanduser().resolve()  # a path, never a model name it would download
        self.name = "megadetector"
        self.version = f"{path.name} sha256:{_sha256(path)[:12]}"
        try:
            self._impl = run_detector.load_detector(str(path), force_cpu=(device == "cpu"))
        except Exception as e:  # its runtime raises anything: a bad file, a missing YOLO library, …
            raise InputError(f"{path}: MegaDetector cannot load it ({type(e).__name__}: {e})") from None
        finally:
            _strict_truncated_images()  # loading imports more of the package
        self._labels = {str(k): str(v) for k, v in getattr(run_detector, "DEFAULT_DETECTOR_LABEL_MAP",
                                                            DETECTION_CATEGORIES).items()}
        self.metadata = dict(MEGADETECTOR_METADATA)
        try:  # its known versions' thresholds (v5: 0.2 typical, 0.05 conservative), by the file's name
            version = run_detector.get_detector_version_from_filename(path.name)
            self.metadata.update(run_detector.get_detector_metadata_from_version_string(version))
        except Exception:  # an unknown name or an older runtime: the defaults it uses itself
            pass

    def detect(self, images: Sequence[Image.Image], threshold: float = 0.1) -> list[list[Detection]]:
        out = []
        for i, im in enumerate(images):
            r = self._impl.generate_detections_one_image(to_rgb(im), f"image-{i}", detection_threshold=threshold)
            if r.get("failure"):
                raise InputError(f"MegaDetector failed on this frame: {r['failure']}")
            out.append(md_detections(r.get("detections") or [], self._labels, threshold))
        return out


def md_detections(raw: Sequence[dict], labels: dict[str, str], threshold: float = 0.0) -> list[Detection]:
    """MegaDetector's detections (`category` id, `conf`, normalised `bbox` [x, y, w, h]) as ours:
    named categories only, boxes clipped to the frame, most confident first."""
    dets = []
    for d in raw:
        category = labels.get(str(d.get("category")))
        conf = float(d.get("conf", 0.0))
        if category not in CATEGORIES or conf < threshold:
            continue
        x, y, w, h = (min(1.0, max(0.0, float(v))) for v in d["bbox"])
        w, h = min(w, 1.0 - x), min(h, 1.0 - y)
        if w > 0 and h > 0:
            dets.append(Detection(category, conf, (x, y, w, h)))
    return sorted(dets, key=lambda d: -d.conf)


def _strict_truncated_images() -> None:
    """MegaDetector's imports switch on Pillow's process-wide LOAD_TRUNCATED_IMAGES; taxoclip
    reports a truncated photo as an error instead of decoding it half grey."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False


def thresholds_of(metadata: dict | None) -> tuple[float, float]:
    """(typical, conservative) detection thresholds from a detector's metadata (or a MegaDetector
    file's `info.detector_metadata`); MegaDetector's defaults where it says nothing."""
    m = {**MEGADETECTOR_METADATA, **{k: v for k, v in (metadata or {}).items() if isinstance(v, (int, float))}}
    return float(m["typical_detection_threshold"]), float(m["conservative_detection_threshold"])


# ----------------------------------------------------------------------------- registry


def _load_yolox_tiny(weights: str | None = None, device: str = "auto") -> YoloxDetector:
    return YoloxDetector(weights, device=device)


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def megadetector_runtime() -> bool:
    """Whether MegaDetector can run here: the `megadetector` package's detection code plus a YOLO
    library it runs models with (`megadetector-utils` alone ships the code but no YOLO library)."""
    return (_has_module("megadetector.detection.run_detector")
            and any(_has_module(m) for m in ("yolov5", "yolov9", "ultralytics")))


def _load_megadetector(weights: str | None = None, device: str = "auto") -> MegaDetector:
    if not _has_module("megadetector.detection.run_detector"):
        raise InputError("the megadetector detector needs MegaDetector's runtime: pip install megadetector "
                         "(then give its weights file: --detector-weights md_v5a.0.0.pt)")
    if not megadetector_runtime():
        raise InputError("MegaDetector's code is installed (megadetector-utils) but no YOLO library to run its "
                         "weights with (yolov5, yolov9 or ultralytics): pip install megadetector")
    if not weights:
        raise InputError("the megadetector detector needs a weights file: --detector-weights md_v5a.0.0.pt "
                         "(MegaDetector v5/v6, from its releases page)")
    if not Path(weights).expanduser().is_file():
        raise InputError(f"{weights}: no such MegaDetector weights file")
    return MegaDetector(weights, device=device)


DETECTORS: dict[str, Callable[..., Detector]] = {
    "yolox-tiny": _load_yolox_tiny,
    "megadetector": _load_megadetector,
}


def load_detector(name: str = DEFAULT_DETECTOR, weights: str | None = None, device: str = "auto") -> Detector:
    """A detector from the registry; `weights` replaces the default (bundled) weights where it has any."""
    if name not in DETECTORS:
        raise InputError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    if name == DEFAULT_DETECTOR and weights is None:
        return _bundled(device)
    return DETECTORS[name](weights=weights, device=device)


@functools.lru_cache(maxsize=4)
def _bundled(device: str) -> YoloxDetector:
    """The bundled detector, built once per device per process (it is read-only once built)."""
    return YoloxDetector(None, device=device)


# ----------------------------------------------------------------------------- conversion


def convert_zamba_wheel(wheel: str | Path, out_dir: str | Path) -> Path:
    """Write the bundled files derivable from a zamba wheel into `out_dir`; returns the weights' path.

    model.safetensors: the checkpoint's `model` state dict only (the .pth also holds SGD
    optimizer state and the epoch), floats as fp16 (halves 20 MB; scores move by < 1e-3),
    `num_batches_tracked` counters dropped; deterministic, so its sha256 can be checked.
    Also the model kwargs JSON and zamba's LICENSE, byte for byte.
    """
    import torch
    from safetensors.torch import save_file

    wheel, out = Path(wheel), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{wheel}: not a readable wheel ({e})") from None
    with zf:
        names = zf.namelist()
        licence = next((n for n in names if n.split("/")[0].endswith(".dist-info") and
                        n.rsplit("/", 1)[-1] in ("LICENSE", "LICENSE.txt", "LICENSE.md")), None)
        if ZAMBA_WEIGHTS not in names or licence is None:
            raise InputError(f"{wheel}: no {ZAMBA_WEIGHTS} (or no dist-info LICENSE); is it a zamba wheel?")
        meta = next((n for n in names if n.endswith(".dist-info/METADATA")), "")
        version = next((line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                        if line.startswith("Version:")), "?") if meta else "?"
        raw = zf.read(ZAMBA_WEIGHTS)
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
        tensors = {k: (v.half() if v.is_floating_point() else v).contiguous()
                   for k, v in sorted(state.items()) if not k.endswith("num_batches_tracked")}
        path = out / "model.safetensors"
        # ONE metadata entry: safetensors writes several in hash order, which changes run to run
        save_file(tensors, str(path), metadata={"source": f"zamba {version} wheel: {ZAMBA_WEIGHTS} "
                                                          f"(sha256 {hashlib.sha256(raw).hexdigest()})"})
        path.chmod(0o644)
        (out / Path(ZAMBA_KWARGS).name).write_bytes(zf.read(ZAMBA_KWARGS))
        (out / "LICENSE").write_bytes(zf.read(licence))
    return path
