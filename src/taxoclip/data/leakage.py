"""Test-set leakage control: find training images that are copies of evaluation images.

Three rules, any of which removes a training image (the report says which fired):

1. `exact`: the same bytes (MD5) as an evaluation image.
2. `pdq`: PDQ Hamming distance below the threshold (default < 10 of 256 bits, the reference's
   rule) to an evaluation image. Catches re-encodes, resizes and brightness changes.
3. `aligned`: a crop-tolerant match. PDQ is a sign pattern of 16x16 DCT coefficients, so a
   shift of 1% of the frame flips ~24 bits on bio-mini's small photos and a 5% crop defeats
   it entirely (measured: 0-10% recall even with 35 pre-cropped PDQ variants per evaluation
   image). So each evaluation image also keeps an 8x8 colour thumbnail (retrieval) and a
   64x64 grey thumbnail (verification). A training image's 8x8 thumbnail retrieves the
   evaluation images it correlates with (>= `retrieve`, at most `top_k`); each candidate is
   then verified by searching crop boxes of the evaluation thumbnail (each side cut by
   0-`max_crop` of the frame, on a grid) for the one that best explains the training image at
   32x32. A match needs, after that alignment, normalised correlation >= `accept` (correlation
   of mean-centred, normalised grey values ignores brightness and contrast changes) and no part
   of the frame left unexplained: in each of the 16 blocks of 8x8 pixels, the residual at half
   resolution (where JPEG and resampling noise average out, but a moved animal or another
   subject in the same scene does not) must hold at most `local` of the image's energy.
   Why the second test: correlation is a global score, and different photos of one scene (the
   same reef camera, another fish) reached 0.95-0.98; their residual sits in one place, a
   copy's is spread thin. On bio-mini it cut false matches from 85 to 26 of 29,500 and let
   `accept` go down from 0.95 to 0.93 (more recall on every transform).

`docs/data.md` has the measured recall and false-removal rates on bio-mini
(`bench/leakage_eval.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = ["AlignedMatch", "retrieval_descriptor", "fine_descriptor", "stored_thumbnail", "EvalThumbnails",
           "RETRIEVAL_SIZE", "FINE_SIZE", "STORED_SIZE"]

RETRIEVAL_SIZE = 8
FINE_SIZE = 32
STORED_SIZE = 64


@dataclass(frozen=True)
class AlignedMatch:
    """Parameters of the crop-tolerant rule (part of a build's identity)."""

    retrieve: float = 0.85  # 8x8 colour correlation to consider an evaluation image at all
    accept: float = 0.93  # 32x32 grey correlation, after the best crop alignment, to call it a copy
    local: float = 0.006  # and at most this share of the energy unexplained in any 8x8 block (see above)
    top_k: int = 4  # candidates verified per training image
    max_crop: float = 0.05  # largest fraction of the frame cut from either side
    steps: int = 5  # grid steps over [0, max_crop] per side


def retrieval_descriptor(img: Image.Image) -> np.ndarray:
    """8x8 RGB, each channel mean-centred, L2-normalised: 192 float32."""
    a = np.asarray(img.convert("RGB").resize((RETRIEVAL_SIZE, RETRIEVAL_SIZE), Image.Resampling.LANCZOS),
                   dtype=np.float32).reshape(-1, 3)
    a = (a - a.mean(0)).reshape(-1)
    return a / (np.linalg.norm(a) + 1e-6)


def fine_descriptor(img: Image.Image) -> np.ndarray:
    """32x32 grey, mean-centred, L2-normalised."""
    a = np.asarray(img.convert("L").resize((FINE_SIZE, FINE_SIZE), Image.Resampling.LANCZOS), dtype=np.float32)
    a = a - a.mean()
    return a / (np.linalg.norm(a) + 1e-6)


def stored_thumbnail(img: Image.Image) -> np.ndarray:
    """64x64 grey uint8: what an evaluation image keeps for verification."""
    return np.asarray(img.convert("L").resize((STORED_SIZE, STORED_SIZE), Image.Resampling.LANCZOS), dtype=np.uint8)


def _area_weights(n_out: int, n_in: int, lo: float, hi: float) -> np.ndarray:
    """Matrix resampling the fraction [lo, hi) of n_in samples onto n_out by area averaging."""
    w = np.zeros((n_out, n_in), np.float32)
    edges = np.linspace(lo * n_in, hi * n_in, n_out + 1)
    for i in range(n_out):
        a, b = edges[i], edges[i + 1]
        for j in range(int(np.floor(a)), min(n_in, int(np.ceil(b)))):
            w[i, j] = max(0.0, min(b, j + 1) - max(a, j))
        w[i] /= w[i].sum()
    return w


@lru_cache(maxsize=4)
def _crop_matrices(max_crop: float, steps: int) -> np.ndarray:
    """(P, FINE, STORED): one resampling matrix per (cut before, cut after) pair on one axis."""
    cuts = np.linspace(0.0, max_crop, steps)
    mats = [_area_weights(FINE_SIZE, STORED_SIZE, a, 1.0 - b) for a in cuts for b in cuts]
    return np.stack(mats)


def _best_of(z: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Correlation of each candidate rendition z[k] (K, 32, 32) with the mean-centred `fine`."""
    n = FINE_SIZE * FINE_SIZE
    dot = np.einsum("kyx,yx->k", z, fine)
    s1 = z.sum(axis=(1, 2))
    s2 = np.einsum("kyx,kyx->k", z, z)
    return dot / np.sqrt(np.maximum(s2 - s1 * s1 / n, 1e-6))


def aligned_correlation(fine: np.ndarray, stored: np.ndarray, params: AlignedMatch,
                        rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Best correlation over crop boxes of each stored thumbnail, and the rendition that reached it:
    fine (32,32), stored (k,64,64) -> (k,), (k,32,32).

    The crop box is separable (a cut pair per axis), so instead of trying all P x P boxes it
    is found by coordinate ascent: best x cuts for the current y cuts, then best y cuts for
    those x cuts, `rounds` times, starting from the middle of the range (~1 ms a candidate).
    """
    m = _crop_matrices(params.max_crop, params.steps)  # (P, 32, 64): one per (cut before, cut after)
    p = m.shape[0]
    flat_t = m.reshape(p * FINE_SIZE, STORED_SIZE).T  # (64, P*32)
    out = np.full(len(stored), -1.0, np.float32)
    renditions = np.empty((len(stored), FINE_SIZE, FINE_SIZE), np.float32)
    for i, e in enumerate(stored.astype(np.float32)):
        py = qx = p // 2
        for _ in range(rounds):
            rows = m[py] @ e  # (32, 64): y cut fixed
            zx = (rows @ flat_t).reshape(FINE_SIZE, p, FINE_SIZE).transpose(1, 0, 2)  # (P, 32, 32)
            cx = _best_of(zx, fine)
            qx = int(np.argmax(cx))
            if cx[qx] > out[i]:
                out[i], renditions[i] = cx[qx], zx[qx]
            cols = e @ m[qx].T  # (64, 32): x cut fixed
            zy = (flat_t.T @ cols).reshape(p, FINE_SIZE, FINE_SIZE)
            cy = _best_of(zy, fine)
            py = int(np.argmax(cy))
            if cy[py] > out[i]:
                out[i], renditions[i] = cy[py], zy[py]
    return out, renditions


def local_residual(fine: np.ndarray, rendition: np.ndarray) -> float:
    """The largest share of `fine`'s energy (it is unit-norm) that the aligned `rendition` leaves
    unexplained in one 8x8 block of the 32x32 frame, measured on the residual averaged over 2x2
    pixels (noise averages out there, a different object does not)."""
    z = rendition - rendition.mean()
    z = z / (np.linalg.norm(z) + 1e-6)
    residual = fine - z * float((fine * z).sum())  # what the best scaled copy of z leaves over
    half = FINE_SIZE // 2
    low = residual.reshape(half, 2, half, 2).mean(axis=(1, 3))
    blocks = (low ** 2).reshape(4, half // 4, 4, half // 4).sum(axis=(1, 3)) * 4  # x4: energy at full size
    return float(blocks.max())


class EvalThumbnails:
    """The evaluation side of the `aligned` rule: 8x8 colour and 64x64 grey thumbnails."""

    def __init__(self, retrieval: np.ndarray, stored: np.ndarray, params: AlignedMatch = AlignedMatch()):
        self.retrieval = np.asarray(retrieval, dtype=np.float32)  # (n, 192)
        self.stored = stored  # (n, 64, 64) uint8, may be a memory map
        self.params = params

    def __len__(self) -> int:
        return len(self.retrieval)

    def match(self, retrieval: np.ndarray, fine: np.ndarray) -> tuple[int, float] | None:
        """(evaluation item, correlation) of the best verified match of one training image, or None."""
        if not len(self.retrieval):
            return None
        corr = self.retrieval @ retrieval
        idx = np.flatnonzero(corr >= self.params.retrieve)
        if not len(idx):
            return None
        order = np.sort(idx[np.argsort(-corr[idx], kind="stable")][: self.params.top_k])
        scores, renditions = aligned_correlation(fine, np.asarray(self.stored[order]), self.params)
        for best in np.argsort(-scores, kind="stable"):
            if scores[best] < self.params.accept:
                return None
            if local_residual(fine, renditions[best]) <= self.params.local:
                return int(order[best]), float(scores[best])
        return None
