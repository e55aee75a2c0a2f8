"""Classification: photos -> taxa with scores, over the Tree of Life or custom labels; embeddings.

The public classes keep pybioclip's names and call signatures (`TreeOfLifeClassifier`,
`CustomLabelsClassifier`, `CustomLabelsBinningClassifier`, `predict(images, rank=…, k=…)`)
and return rows with pybioclip's keys. Underneath, images are decoded in worker processes
while the model runs, the model runs in bf16 where the CPU supports it, and scores are the
exact softmax over the whole vocabulary computed in chunks.

`predict_iter` yields one `Prediction` per image as soon as its batch is done (front ends
stream them to files); an unreadable image yields a Prediction with `error` set and the
run goes on.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import InputError
from .io.images import ImageLoader, ImageRef, default_workers, find_images
from .io.preprocess import ImagePreprocess
from .io.writers import ERROR, FILE_NAME, SCORE, prediction_columns
from .models import DEFAULT_MODEL, ClipModel, load_model, resolve, resolve_device, resolve_precision
from .models.runtime import batch_size_for, wants_draft
from .taxonomy import RANKS, Rank
from .textbank import RANK_COLUMNS, TextBank, read_subset_csv, take_values

__all__ = [
    "Prediction", "TreeOfLifeClassifier", "CustomLabelsClassifier", "CustomLabelsBinningClassifier",
    "ImageEmbedder", "embed_images", "prediction_columns", "batch_predictions", "COMPILE_MIN_IMAGES",
]

log = logging.getLogger(__name__)

# Compiling the image tower costs 30-50 s once per process; it pays off only on long runs.
COMPILE_MIN_IMAGES = int(os.environ.get("TAXOCLIP_COMPILE_MIN_IMAGES", "2000"))
Images = Iterable["str | os.PathLike | ImageRef | object"] | str


@dataclass
class Prediction:
    """The ranked results for one image, or why there are none."""

    file_name: str
    rows: list[dict] = field(default_factory=list)
    error: str | None = None

    def as_rows(self) -> list[dict]:
        if self.error is not None:
            return [{FILE_NAME: self.file_name, ERROR: self.error}]
        return self.rows


# ----- the shared pipeline --------------------------------------------------------------------
class _Base:
    """Model loading and the decode -> encode loop that every classifier shares."""

    needs_text = False

    def __init__(self, model: str | ClipModel | None = None, *, pretrained: str | None = None, device: str = "auto",
                 precision: str = "auto", batch_size: int | None = None, workers: int | None = None,
                 compile: str | bool = "auto", model_str: str | None = None, pretrained_str: str | None = None):
        model = model if model is not None else (model_str or DEFAULT_MODEL)  # pybioclip's keyword names
        pretrained = pretrained or pretrained_str
        self.model = model if isinstance(model, ClipModel) else load_model(
            model, pretrained=pretrained, device=device, precision=precision, text=self.needs_text)
        self.batch_size = batch_size or batch_size_for(self.model.card, self.model.device.type)
        self.workers = workers
        self.compile = compile

    @property
    def model_str(self) -> str:
        return self.model.id

    def _loader(self, images: Images | ImageLoader, batch_size: int | None) -> ImageLoader:
        if isinstance(images, ImageLoader):
            return images
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        refs, problems = find_images(images)
        if problems and not refs:
            raise InputError("; ".join(problems))
        for p in problems:
            log.warning(p)
        return _image_loader(refs, self.model.preprocess, self.model.device, self.model.dtype,
                             batch_size or self.batch_size, self.workers, self.model.card)

    def _maybe_compile(self, n_images: int, batch_size: int) -> None:
        want = self.compile if isinstance(self.compile, bool) else (
            self.compile == "yes" or (self.compile == "auto" and n_images >= COMPILE_MIN_IMAGES
                                      and (self.model.card is None or self.model.card.compile_auto)))
        if want and self.model._compiled_batch is None:
            log.info("compiling the image tower for batch size %d", batch_size)
            self.model.compile(batch_size)

    def _features(self, images: Images | ImageLoader, batch_size: int | None, progress: bool | None,
                  callback: Callable[[int, int], None] | None = None, normalize: bool = True):
        """Yield (refs, features of the readable ones [n_ok, D], ok positions, errors) per batch."""
        from tqdm.auto import tqdm

        loader = self._loader(images, batch_size)
        total = len(loader.refs)
        self._maybe_compile(total, loader.batch_size)
        bar = tqdm(total=total, unit="img", disable=(None if progress is None else not progress) if callback is None
                   else True, dynamic_ncols=True, leave=False)
        done = 0
        try:
            for batch in loader:
                feats = self.model.encode_image(batch.pixels, normalize=normalize) if batch.ok else None
                yield batch.refs, feats, batch.ok, batch.errors
                done += len(batch.refs)
                bar.update(len(batch.refs))
                if callback:
                    callback(done, total)
        finally:
            bar.close()

    def _iter(self, images, batch_size, progress, callback, rows_for) -> Iterator[Prediction]:
        for refs, feats, ok, errors in self._features(images, batch_size, progress, callback):
            yield from batch_predictions(refs, feats, ok, errors, rows_for)


def batch_predictions(refs: Sequence[ImageRef], feats: torch.Tensor | None, ok: Sequence[int], errors: Mapping[int, str],
                      rows_for: Callable[[torch.Tensor], list[list[dict]]]) -> Iterator[Prediction]:
    """One batch's Predictions in input order: the readable images' rows from `rows_for(feats)`
    (a classifier's `scorer`), an error Prediction for each of the others. Engines that run the
    image tower themselves (`taxoclip.scale`) call this, so their rows are the classifier's."""
    results = rows_for(feats) if feats is not None else []
    per_ok = dict(zip(ok, results))
    for i, ref in enumerate(refs):
        if i in errors:
            yield Prediction(ref.name, error=errors[i])
        else:
            yield Prediction(ref.name, [{FILE_NAME: ref.name, **row} for row in per_ok[i]])


def _rows(pred_iter: Iterator[Prediction]) -> list[dict]:
    return [row for p in pred_iter for row in p.as_rows()]


# ----- Tree of Life ---------------------------------------------------------------------------
class TreeOfLifeClassifier(_Base):
    """Species (or any higher rank) from the published vocabulary of a BioCLIP model.

    `vocabulary` overrides where the vocabulary comes from (see `TextBank.from_published`);
    `taxa` builds one from any taxa table instead (CSV/Parquet with rank columns).
    """

    def __init__(self, model: str | ClipModel | None = None, *, vocabulary: str | os.PathLike | None = None,
                 taxa: str | os.PathLike | pd.DataFrame | None = None, **kwargs):
        self.needs_text = taxa is not None
        super().__init__(model, **kwargs)
        bank = (TextBank.from_taxa(self.model, taxa) if taxa is not None
                else TextBank.from_published(vocabulary, model=self.model))
        self.use_vocabulary(bank)
        self.temperature = 1.0  # a calibration's (`taxoclip calibrate`); 1 = the model's own scale

    def use_vocabulary(self, bank: TextBank) -> "TreeOfLifeClassifier":
        """Predict over `bank` from now on (e.g. the vocabulary with prototypes merged in,
        `evaluate.prototypes.merge_prototypes`); a subset chosen before is dropped."""
        self.full_bank = self.bank = bank.to(self.model.device)
        return self

    # pybioclip's subset API
    def get_label_data(self) -> pd.DataFrame:
        return self.full_bank.label_data()

    def create_taxa_filter(self, rank: Rank | str, user_values: Sequence[str]) -> np.ndarray:
        return self.full_bank.mask(rank, user_values)

    def create_taxa_filter_from_csv(self, csv_path: str | os.PathLike) -> np.ndarray:
        return self.full_bank.mask(*read_subset_csv(csv_path))

    def apply_filter(self, keep_labels_ary: Sequence[bool]) -> None:
        self.bank = self.full_bank.subset(np.asarray(keep_labels_ary, dtype=bool))

    def restrict(self, subset_csv: str | os.PathLike | None = None, **rank_values: Sequence[str]) -> "TreeOfLifeClassifier":
        """Limit predictions to a subset CSV (pybioclip's `--subset`) or rank=values pairs."""
        bank = self.full_bank.subset_from_csv(subset_csv) if subset_csv else self.full_bank
        for rank, values in rank_values.items():
            bank = bank.where(rank, values)
        self.bank = bank
        return self

    def predict_iter(self, images: Images | ImageLoader, rank: Rank | str = Rank.SPECIES, min_prob: float = 1e-9,
                     k: int = 5, batch_size: int | None = None, callback: Callable[[int, int], None] | None = None,
                     progress: bool | None = False) -> Iterator[Prediction]:
        yield from self._iter(images, batch_size, progress, callback, self.scorer(rank, k, min_prob))

    def scorer(self, rank: Rank | str = Rank.SPECIES, k: int = 5, min_prob: float = 1e-9,
               bank: TextBank | None = None) -> Callable[[torch.Tensor], list[list[dict]]]:
        """Image features [B, D] -> the result rows of each image: what `predict` does after the
        image tower, for callers that run the tower themselves (the server batches requests)."""
        r = Rank.parse(rank)
        _check_k(k)
        scale = self.scale
        bank = bank if bank is not None else self.bank
        if r is Rank.SPECIES:
            table = bank.table

            def rows_for(feats):
                probs, idx = bank.top_k(feats, k, scale)
                return _per_image(_species_rows(table, idx.reshape(-1).numpy(), probs.reshape(-1).tolist()), probs.shape[1])
            return rows_for
        _, groups = bank.groups(r)
        cols = list(RANKS[: r + 1])

        def rows_for(feats):
            probs, gid = bank.rollup(feats, r, k, scale, min_prob)
            return _per_image(_table_rows(groups, cols, gid.reshape(-1).numpy(), probs.reshape(-1).tolist()), probs.shape[1])
        return rows_for

    def predict(self, images: Images, rank: Rank | str = Rank.SPECIES, min_prob: float = 1e-9, k: int = 5,
                batch_size: int | None = None, callback: Callable[[int, int], None] | None = None) -> list[dict]:
        """Top-k taxa per image: dicts with `file_name`, the ranks, `common_name` (species) and `score`."""
        return _rows(self.predict_iter(images, rank, min_prob, k, batch_size, callback))

    def masses_iter(self, images: Images | ImageLoader, n_species: int, n_groups: int, batch_size: int | None = None,
                    progress: bool | None = False) -> Iterator[tuple[list[str], tuple | None, dict[int, str]]]:
        """Per batch: (photo names, `TextBank.masses` of the readable ones or None, errors by position):
        what `taxoclip.decide` stores and decides on."""
        _check_k(n_species)
        _check_k(n_groups)
        for refs, feats, ok, errors in self._features(images, batch_size, progress):
            masses = self.bank.masses(feats, self.scale, n_species, n_groups) if feats is not None else None
            yield [r.name for r in refs], masses, errors

    @property
    def scale(self) -> float:
        """The logit scale scores use: the model's, divided by a calibration's temperature."""
        return self.model.logit_scale / self.temperature


def _table_rows(table: pd.DataFrame, cols: list[str], positions: np.ndarray, scores: list[float]) -> list[dict]:
    """Rows of `table` at `positions` as dicts with a score each, column by column (a row-by-row
    `iloc` costs ~0.5 ms per row on Arrow-backed tables: more than the model's time per photo)."""
    values = {c: take_values(table[c], positions) for c in cols}
    return [{**{c: values[c][n] for c in cols}, SCORE: p} for n, p in enumerate(scores)]


def _species_rows(table: pd.DataFrame, positions: np.ndarray, scores: list[float]) -> list[dict]:
    rows = _table_rows(table, RANK_COLUMNS + ["common_name"], positions, scores)
    order = RANK_COLUMNS + ["species", "common_name", SCORE]
    for row in rows:
        row["species"] = f"{row['genus']} {row['species_epithet']}" if row["species_epithet"] else ""
    return [{c: row[c] for c in order} for row in rows]


def _per_image(rows: list[dict], per: int) -> list[list[dict]]:
    """Flat rows, `per` for each image in turn -> one list per image."""
    return [rows[i:i + per] for i in range(0, len(rows), per)] if per else []


def _check_k(k) -> None:
    if k is not None and (not isinstance(k, (int, np.integer)) or k <= 0):
        raise InputError(f"k must be a positive integer, got {k!r}")


# ----- custom labels --------------------------------------------------------------------------
class CustomLabelsClassifier(_Base):
    """Zero-shot classification over your own labels (each embedded through the 80 templates)."""

    needs_text = True

    def __init__(self, cls_ary: Sequence[str], *, templates: str | Sequence[str] = "openai", **kwargs):
        super().__init__(kwargs.pop("model", None), **kwargs)
        self.classes = [c.strip() for c in cls_ary if str(c).strip()]
        if not self.classes:
            raise InputError("no class labels given")
        self.bank = TextBank.from_labels(self.model, self.classes, templates=templates)

    def _scores(self, probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        v, i = probs.topk(k, dim=1)
        return [[(self.classes[j], p) for p, j in zip(ps.tolist(), js.tolist())] for ps, js in zip(v, i)]

    def predict_iter(self, images: Images | ImageLoader, k: int | None = None, batch_size: int | None = None,
                     callback: Callable[[int, int], None] | None = None, progress: bool | None = False) -> Iterator[Prediction]:
        yield from self._iter(images, batch_size, progress, callback, self.scorer(k))

    def scorer(self, k: int | None = None) -> Callable[[torch.Tensor], list[list[dict]]]:
        """Image features [B, D] -> each image's best `k` labels (all when k is None)."""
        _check_k(k)
        n = len(self.classes) if not k or k > len(self.classes) else k

        def rows_for(feats):
            probs = self.bank.probabilities(feats, self.model.logit_scale)
            return [[{"classification": c, SCORE: p} for c, p in per] for per in self._scores(probs, n)]
        return rows_for

    def predict(self, images: Images, k: int | None = None, batch_size: int | None = None,
                callback: Callable[[int, int], None] | None = None) -> list[dict]:
        """Per image, the `k` best labels (all when k is None): `file_name`, `classification`, `score`."""
        return _rows(self.predict_iter(images, k, batch_size, callback))


class CustomLabelsBinningClassifier(CustomLabelsClassifier):
    """Custom labels grouped into bins; a bin scores the summed probability of its labels."""

    def __init__(self, cls_to_bin: Mapping[str, str], **kwargs):
        bad = [c for c, b in cls_to_bin.items() if b is None or (isinstance(b, float) and np.isnan(b)) or not str(b).strip()]
        if bad:
            raise InputError(f"labels without a bin: {', '.join(map(str, bad[:10]))}")
        self.cls_to_bin = {str(c).strip(): str(b).strip() for c, b in cls_to_bin.items()}
        super().__init__(list(self.cls_to_bin), **kwargs)

    def _scores(self, probs, k):
        out = []
        for row in probs.tolist():
            sums: dict[str, float] = defaultdict(float)
            for c, p in zip(self.classes, row):
                sums[self.cls_to_bin[c]] += p
            out.append(sorted(sums.items(), key=lambda kv: -kv[1])[:k])
        return out


# ----- embeddings -----------------------------------------------------------------------------
class ImageEmbedder(_Base):
    """Image embeddings (the model's joint space); `normalize=False` matches pybioclip's `embed`."""

    def embed_iter(self, images: Images | ImageLoader, *, normalize: bool = False, batch_size: int | None = None,
                   progress: bool | None = False) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        for refs, feats, ok, errors in self._features(images, batch_size, progress, normalize=normalize):
            vecs = dict(zip(ok, feats.numpy())) if feats is not None else {}
            for i, ref in enumerate(refs):
                yield ref.name, vecs.get(i), errors.get(i)


def embed_images(images: Images, model: str | ClipModel = DEFAULT_MODEL, *, normalize: bool = False,
                 **kwargs) -> tuple[list[str], np.ndarray]:
    """(names, [N, D] float32) for the readable images; unreadable ones are logged and skipped."""
    names, vecs = [], []
    for name, vec, err in ImageEmbedder(model, **kwargs).embed_iter(images, normalize=normalize):
        if err:
            log.warning("%s: %s", name, err)
            continue
        names.append(name)
        vecs.append(vec)
    return names, (np.stack(vecs) if vecs else np.zeros((0, 0), dtype=np.float32))


def start_loader(inputs: Iterable, *, model: str = DEFAULT_MODEL, pretrained: str | None = None, device: str = "auto",
                 precision: str = "auto", batch_size: int | None = None, workers: int | None = None,
                 max_decode_memory: int | str | None = None) -> tuple[ImageLoader | None, list[str]]:
    """Find the images and start decoding them before the model is loaded (front ends call this
    first, so the first batches are ready when the weights are). Returns (loader or None when
    there is nothing to read, one message per input that held no image). `max_decode_memory`
    bounds what the decoding workers together spend on big images (default: half the free memory)."""
    refs, problems = find_images(inputs)
    if not refs:
        return None, problems
    source = resolve(model, pretrained)
    preprocess = ImagePreprocess.from_config(source.preprocess_cfg)
    dev = resolve_device(device)
    loader = _image_loader(refs, preprocess, dev, resolve_precision(precision, dev), batch_size, workers, source.card,
                           max_decode_memory)
    return loader.start(), problems


def _image_loader(refs: Sequence[ImageRef], preprocess, device: torch.device, dtype: torch.dtype,
                  batch_size: int | None, workers: int | None, card=None,
                  max_decode_memory: int | str | None = None) -> ImageLoader:
    """The loader for a model on `device` in `dtype`: batch size and decoding workers suit the device;
    JPEG draft decoding belongs to the reduced-precision path (fp32 stays faithful to pybioclip), or
    to models whose card asks for it (small inputs, where full-size decoding would dominate)."""
    return ImageLoader(refs, preprocess, batch_size=batch_size or batch_size_for(card, device.type),
                       workers=default_workers(accelerator=device.type != "cpu") if workers is None else workers,
                       draft=draft_decoding(card, dtype), max_decode_memory=max_decode_memory)


def draft_decoding(card, dtype: torch.dtype) -> bool:
    """Whether JPEGs are decoded at reduced size (`ImageLoader(draft=…)`) for this model."""
    return wants_draft(card, "fp32" if dtype == torch.float32 else "reduced")
