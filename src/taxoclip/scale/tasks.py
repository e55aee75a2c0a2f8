"""What an engine runs over many photos: a task description that travels (to a Ray actor, into a
manifest) and the runner it opens where the model lives.

A task is plain data (a frozen dataclass), so a manifest can store it, a re-run can compare it
and a worker on another machine can rebuild it. `open()` loads the model once and returns a
`Runner`, whose `rows(batch)` turns one decoded batch into output rows with the same code the
single-machine classifier uses (`classify.batch_predictions`): both engines give the same answers.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar

from ..errors import InputError
from ..io.images import Batch

__all__ = ["Task", "PredictTask", "EmbedTask", "Runner", "task_from_dict"]


@dataclass(frozen=True)
class Task:
    """Model options every task shares."""

    kind: ClassVar[str] = ""
    model: str = "taxoclip-mini"
    pretrained: str | None = None
    precision: str = "auto"

    def columns(self) -> list[str]:
        raise NotImplementedError

    def as_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def identity(self) -> dict:
        """What makes two runs' outputs interchangeable: the options, plus the content of the
        model weights and of every file an option names (a changed subset CSV is another run)."""
        from ..models import resolve

        ident = self.as_dict()
        ident["weights"] = resolve(self.model, self.pretrained).fingerprint
        for key, value in ident.items():
            if isinstance(value, str) and key not in ("kind", "model", "precision") and os.path.isfile(value):
                from ..cache import file_sha256

                ident[key] = {"file": os.path.basename(value), "sha256": file_sha256(value)}
        return ident

    def preprocess(self):
        """The image preprocessing of this task's model, known without loading the model (so
        decoding can start, or run on other machines, before the weights are read)."""
        from ..models import resolve
        from ..io.preprocess import ImagePreprocess

        return ImagePreprocess.from_config(resolve(self.model, self.pretrained).preprocess_cfg)

    def open(self, device: str = "auto", batch_size: int | None = None) -> "Runner":
        raise NotImplementedError


@dataclass(frozen=True)
class PredictTask(Task):
    """`taxoclip predict`: top-k taxa at a rank (Tree of Life), or custom labels / bins."""

    kind: ClassVar[str] = "predict"
    rank: str = "species"
    k: int | None = None
    min_prob: float = 1e-9
    subset: str | None = None
    vocabulary: str | None = None
    taxa: str | None = None
    labels: tuple[str, ...] = ()  # custom labels (--cls)
    bins: tuple[tuple[str, str], ...] = ()  # (label, bin) pairs (--bins)

    def __post_init__(self):
        if self.labels and self.bins:
            raise InputError("custom labels and bins cannot be combined")
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "bins", tuple(tuple(b) for b in self.bins))

    @property
    def custom(self) -> bool:
        return bool(self.labels or self.bins)

    def columns(self) -> list[str]:
        from ..io.writers import prediction_columns

        return prediction_columns(None if self.custom else self.rank)

    def open(self, device: str = "auto", batch_size: int | None = None) -> "Runner":
        from .. import classify

        common = dict(model=self.model, pretrained=self.pretrained, device=device, precision=self.precision,
                      batch_size=batch_size, workers=0, compile="no")
        if self.custom:
            clf = (classify.CustomLabelsClassifier(list(self.labels), **common) if self.labels
                   else classify.CustomLabelsBinningClassifier(dict(self.bins), **common))
            rows_for = clf.scorer(self.k)
        else:
            clf = classify.TreeOfLifeClassifier(vocabulary=self.vocabulary, taxa=self.taxa, **common)
            if self.subset:
                clf.restrict(self.subset)
            rows_for = clf.scorer(self.rank, self.k or 5, self.min_prob)

        def rows(batch: Batch) -> list[list[dict]]:
            feats = clf.model.encode_image(batch.pixels) if batch.ok else None
            return [p.as_rows() for p in classify.batch_predictions(batch.refs, feats, batch.ok, batch.errors, rows_for)]
        return Runner(clf.model, clf.batch_size, rows)


@dataclass(frozen=True)
class EmbedTask(Task):
    """`taxoclip embed`: one vector per photo (L2-normalised with `normalize`)."""

    kind: ClassVar[str] = "embed"
    normalize: bool = False

    def columns(self) -> list[str]:
        return ["file_name", "embedding", "error"]

    def open(self, device: str = "auto", batch_size: int | None = None) -> "Runner":
        from .. import classify

        emb = classify.ImageEmbedder(self.model, pretrained=self.pretrained, device=device, precision=self.precision,
                                     batch_size=batch_size, workers=0, compile="no")

        def rows(batch: Batch) -> list[list[dict]]:
            feats = emb.model.encode_image(batch.pixels, normalize=self.normalize) if batch.ok else None
            vecs = dict(zip(batch.ok, feats.float().numpy())) if feats is not None else {}
            return [[{"file_name": ref.name, "embedding": vecs[i].tolist() if i in vecs else None,
                      "error": batch.errors.get(i)}] for i, ref in enumerate(batch.refs)]
        return Runner(emb.model, emb.batch_size, rows)


@dataclass
class Runner:
    """A loaded model and the function from a decoded batch to its output rows (one list per image)."""

    model: object
    batch_size: int
    rows: Callable[[Batch], list[list[dict]]] = field(repr=False)

    @property
    def draft(self) -> bool:
        """JPEG draft decoding, as the single-machine loader of this model chooses it."""
        from ..classify import draft_decoding

        return draft_decoding(self.model.card, self.model.dtype)


_KINDS: dict[str, type[Task]] = {t.kind: t for t in (PredictTask, EmbedTask)}


def task_from_dict(d: dict) -> Task:
    """A task back from its `as_dict()` (a manifest, a message to a worker)."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in _KINDS:
        raise InputError(f"unknown task kind {kind!r}; expected one of {', '.join(_KINDS)}")
    for key in ("labels", "bins"):
        if key in d:
            d[key] = tuple(tuple(x) if isinstance(x, list) else x for x in d[key])
    return _KINDS[kind](**d)
