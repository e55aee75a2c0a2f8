"""Calibration: a temperature that makes a model's probabilities mean what they say.

A CLIP model's softmax over a large vocabulary is rarely calibrated (a small model over
300K taxa puts 1-5 % on a species it gets right), and a threshold on an uncalibrated
probability means something different for every model. Temperature scaling (Guo et al.
2017) divides the logits by one T fitted to minimise the negative log-likelihood of the
true species on labelled photos; it keeps the ranking, so top-1 accuracy is unchanged.

A calibration is stored with the model's id and weights hash (in the cache, or shipped
beside a bundled model as `calibration.json`); decisions use it unless told otherwise.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache import cache_root, hash_key
from ..durable import write_atomic
from ..errors import InputError

__all__ = ["Calibration", "fit_temperature", "reliability", "expected_calibration_error", "load_calibration",
           "calibration_path", "TEMPERATURES"]

TEMPERATURES = np.geomspace(0.05, 4.0, 25)
FILE_NAME = "calibration.json"


@dataclass
class Calibration:
    model: str
    weights_hash: str
    vocabulary: dict
    temperature: float
    photos_fit: int
    photos_held_out: int
    datasets: list[str] = field(default_factory=list)
    held_out: dict = field(default_factory=dict)  # nll, ece, accuracy and reliability tables, before/after

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        write_atomic(path, json.dumps(asdict(self), indent=2).encode())
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Calibration":
        try:
            data = json.loads(Path(path).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"cannot read calibration {path}: {e}") from None


def calibration_path(model_id: str, weights_hash: str) -> Path:
    """Where `taxoclip calibrate` stores the calibration of a model (by id and weights hash)."""
    return cache_root() / "calibration" / f"{hash_key(model_id, weights_hash)}.json"


def load_calibration(model, spec: str | None = "auto") -> Calibration | None:
    """`auto`: the stored calibration of this model, else one shipped beside its weights;
    `none`: no calibration; else a calibration file (which must be for this model)."""
    if spec in (None, "none"):
        return None
    if spec != "auto":
        cal = Calibration.read(spec)
        if cal.weights_hash != model.source.fingerprint:
            raise InputError(f"calibration {spec} was fitted for {cal.model} ({cal.weights_hash}), not for "
                             f"{model.id} ({model.source.fingerprint})")
        return cal
    stored = calibration_path(model.id, model.source.fingerprint)
    if stored.is_file():
        return Calibration.read(stored)
    weights = model.source.weights
    shipped = Path(weights).parent / FILE_NAME if weights else None
    if shipped is not None and shipped.is_file():
        cal = Calibration.read(shipped)
        return cal if cal.model == model.id or cal.weights_hash == model.source.fingerprint else None
    return None


@torch.inference_mode()
def temperature_curve(bank, feats: torch.Tensor, targets: np.ndarray, scale: float,
                      temperatures: np.ndarray = TEMPERATURES, batch: int = 256) -> tuple[np.ndarray, dict]:
    """Mean NLL of the target rows at each temperature, and top-1 confidence/correctness at each.

    `targets` are bank rows (one per photo); one exact pass over the bank per temperature."""
    nll = np.zeros(len(temperatures))
    conf = np.zeros((len(temperatures), len(feats)))
    correct = np.zeros(len(feats), dtype=bool)
    target_rows = torch.as_tensor(targets, dtype=torch.long)
    emb_t = bank._rows(target_rows).float()
    for s in range(0, len(feats), batch):
        f = feats[s:s + batch].float()
        true = (f * emb_t[s:s + batch]).sum(1)
        for j, t in enumerate(temperatures):
            lse, v, i = bank._scan(f, scale / t, 1)
            nll[j] += float((lse - true * scale / t).sum())
            conf[j, s:s + len(f)] = torch.exp(v[:, 0] - lse).numpy()
            if j == 0:
                correct[s:s + len(f)] = (i[:, 0] == target_rows[s:s + batch]).numpy()
    return nll / max(len(feats), 1), {"confidence": conf, "correct": correct}


def fit_temperature(nll: np.ndarray, temperatures: np.ndarray = TEMPERATURES) -> float:
    """The temperature of least NLL, refined by a parabola through its neighbours (in log T)."""
    j = int(np.argmin(nll))
    if 0 < j < len(nll) - 1:
        x = np.log(temperatures[j - 1:j + 2])
        a, b, _ = np.polyfit(x, nll[j - 1:j + 2], 2)
        if a > 0:
            return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
    return float(temperatures[j])


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: photos, mean confidence, accuracy."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        out.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "photos": int(sel.sum()),
                    "confidence": float(confidence[sel].mean()) if sel.any() else None,
                    "accuracy": float(correct[sel].mean()) if sel.any() else None})
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    table = reliability(confidence, correct, bins)
    n = max(len(confidence), 1)
    return float(sum(r["photos"] / n * abs(r["confidence"] - r["accuracy"]) for r in table if r["photos"]))
