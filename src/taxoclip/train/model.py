"""Building a trainable model: any open_clip config, initial weights, and the replay head.

`build_model` turns a `ModelConfig` into an open_clip model (`CLIP` or `CustomTextCLIP`):
an open_clip architecture name (the project's own configs in `model_configs/` are
registered with open_clip), a model id `taxoclip.models` resolves, or a config JSON file;
initialised at random (seeded), from full CLIP weights, or tower by tower (a timm trunk's
state dict, a Hugging Face text model directory).

`ContrastiveModule` is what the optimiser trains: one forward computes normalised image and
text features for the biology batch (image projection `visual.proj`) and the replay batch
(image projection `visual.continual_proj`, initialised from `proj`); both share the image
trunk and the text tower. Inference models never carry `continual_proj` (see export.py).
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaxoclipError
from .config import ConfigError, ModelConfig

__all__ = ["MODEL_CONFIG_DIR", "register_model_configs", "BuiltModel", "build_model", "ContrastiveModule",
           "add_continual_proj", "CONTINUAL_KEY", "load_tower_weights", "make_tokenizer", "construct"]

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CONTINUAL_KEY = "continual_proj"
_registered = False


def register_model_configs() -> None:
    """Make the project's architectures (model_configs/*.json) known to open_clip by name."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


@dataclass
class BuiltModel:
    net: nn.Module
    model_cfg: dict
    preprocess_cfg: dict = field(default_factory=dict)
    tokenizer: object = None
    tokenizer_dir: str = ""  # a Hugging Face tokenizer directory to ship with exports


def construct(model_cfg: dict) -> nn.Module:
    """The open_clip model class for a config, randomly initialised with the current torch RNG.

    Unlike `taxoclip.models.instantiate`, a Hugging Face text tower named by a local directory
    loads its pretrained weights (`hf_model_pretrained`); timm trunks never download.
    """
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("preprocess_cfg", None)
    vision, text = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        text.setdefault("hf_model_pretrained", False)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text
    if "multimodal_cfg" in cfg:
        raise ConfigError("CoCa models (multimodal_cfg) are not supported for contrastive training")
    return (CustomTextCLIP if custom_text else CLIP)(**cfg)


def _read_config_file(path: Path) -> tuple[dict, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read model config {path}: {e}") from None
    if "model_cfg" in data:
        return data["model_cfg"], data.get("preprocess_cfg", {})
    data = dict(data)
    return data, data.pop("preprocess_cfg", {})


def _resolve(cfg: ModelConfig) -> tuple[dict, dict, Path | None]:
    """Model config, preprocessing and the full-weights file for a `ModelConfig`."""
    import open_clip

    from ..models import ModelLoadError, resolve

    register_model_configs()
    name, pretrained = cfg.name, cfg.pretrained or None
    if name.endswith(".json"):
        model_cfg, pre = _read_config_file(Path(name).expanduser())
        weights = None
        if pretrained:
            weights = Path(pretrained) if Path(pretrained).is_file() else resolve(pretrained).weights
        return model_cfg, pre, weights
    known = open_clip.get_model_config(name)
    if known is not None:
        model_cfg = copy.deepcopy(known)
        pre = dict(model_cfg.pop("preprocess_cfg", {}))
        weights = None
        if pretrained:
            try:
                src = resolve(name, pretrained)
            except ModelLoadError:
                src = resolve(pretrained)  # another model's weights for the same architecture
            weights = src.weights
            pre.update(src.preprocess_cfg)
        return model_cfg, pre, weights
    src = resolve(name, pretrained)
    return copy.deepcopy(src.model_cfg), dict(src.preprocess_cfg), src.weights


def build_model(cfg: ModelConfig, *, replay: bool = False, seed: int = 0) -> BuiltModel:
    """Build and initialise the model a run trains (on the CPU, fp32)."""
    model_cfg, pre, weights = _resolve(cfg)
    package_path = _package_path
    vision, text = model_cfg.setdefault("vision_cfg", {}), model_cfg.setdefault("text_cfg", {})
    if cfg.fsdp:  # FSDP shards only tensors with a dimension; exports turn it back into a scalar
        model_cfg["nonscalar_logit_scale"] = True
    if cfg.image_size:
        vision["image_size"] = cfg.image_size
    tokenizer_dir = ""
    text_file = None
    build_cfg = copy.deepcopy(model_cfg)  # what builds the net: may point at local directories
    if cfg.text_weights:
        tw = package_path(cfg.text_weights, "model.text_weights")
        if tw.is_dir() and "hf_model_name" in text:
            # Build from the directory; the saved config keeps the model's name (exports ship its config.json).
            build_cfg["text_cfg"].update(hf_model_name=str(tw), hf_tokenizer_name=str(tw), hf_model_pretrained=True)
        elif tw.is_file():
            text_file = tw
        else:
            raise ConfigError(f"model.text_weights {tw}: not a weights file, nor a Hugging Face model directory "
                              f"for a config with an HF text tower")
    if "hf_tokenizer_name" in build_cfg["text_cfg"] and Path(build_cfg["text_cfg"]["hf_tokenizer_name"]).is_dir():
        tokenizer_dir = build_cfg["text_cfg"]["hf_tokenizer_name"]
    torch.manual_seed(seed)
    try:
        net = construct(build_cfg)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot build model {cfg.name}: {e}") from None
    text.pop("hf_model_pretrained", None)
    continual = None
    if weights is not None:
        continual = _load_full(net, Path(weights))
    if cfg.image_weights:
        load_tower_weights(_image_target(net), package_path(cfg.image_weights, "model.image_weights"), prefix="visual.")
    if text_file is not None:
        load_tower_weights(_text_target(net), text_file, prefix="text." if hasattr(net, "text") else "")
    if replay:
        add_continual_proj(net, continual)
    lock_towers(net, cfg)
    silence_key_bias_grads(net)
    size = vision.get("image_size", 224)
    pre = {"size": size if isinstance(size, int) else size[0], **{k: v for k, v in pre.items() if k != "size"}}
    return BuiltModel(net, model_cfg, pre, make_tokenizer(build_cfg), tokenizer_dir)


def _package_path(spec: str, what: str) -> Path:
    from ..models.loading import package_path

    try:
        return package_path(spec)
    except FileNotFoundError as e:
        raise ConfigError(f"{what}: {e}") from None


def lock_towers(net: nn.Module, cfg: ModelConfig) -> None:
    """Freeze what the config locks, with open_clip's own lock methods (LiT and its text mirror)."""
    if cfg.lock_image:
        # open_clip's freeze_bn_stats swaps each BatchNorm2d for a FrozenBatchNorm2d, which drops the
        # activation of timm's BatchNormAct2d (EfficientNet, …) and changes the saved keys: instead,
        # frozen norms keep their module and run in eval mode.
        net.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups, freeze_bn_stats=False)
        if cfg.lock_image_freeze_bn_stats:
            keep_frozen_norms_in_eval(net.visual)
    if cfg.lock_text:
        net.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)


def keep_frozen_norms_in_eval(module: nn.Module) -> int:
    """Batch norms whose parameters are all frozen use and keep their running statistics, even in
    train mode (a pre-forward hook; the modules and their saved state stay as they are)."""
    n = 0
    for m in module.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            m.register_forward_pre_hook(_eval_mode)
            n += 1
    return n


def _eval_mode(module: nn.Module, args) -> None:
    module.eval()


def silence_key_bias_grads(net: nn.Module) -> int:
    """Zero the gradient of attention key biases, whose true gradient is exactly zero.

    A bias added to every key shifts all of a query's scores by the same amount, which the
    softmax ignores. Autograd still returns rounding noise for it, and Adam normalises noise
    into full-size steps: the biases drift randomly and differently on 1 and 2 processes.
    Zeroing that noise changes no output and keeps distributed training exact.
    Returns the number of attention layers touched.
    """
    n = 0
    for m in net.modules():
        bias = getattr(m, "in_proj_bias", None)  # nn.MultiheadAttention, open_clip's Attention
        if bias is None and isinstance(getattr(m, "qkv", None), nn.Linear):  # timm's Attention
            bias = m.qkv.bias
        if isinstance(bias, torch.Tensor) and bias.requires_grad and bias.numel() % 3 == 0:
            d = bias.numel() // 3
            bias.register_hook(lambda g, d=d: torch.cat([g[:d], torch.zeros_like(g[d:2 * d]), g[2 * d:]]))
            n += 1
    return n


def make_tokenizer(model_cfg: dict):
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text = model_cfg.get("text_cfg", {})
    ctx = text.get("context_length", 77)
    kwargs = text.get("tokenizer_kwargs", {})
    if text.get("hf_tokenizer_name"):
        return HFTokenizer(text["hf_tokenizer_name"], context_length=ctx, **kwargs)
    return SimpleTokenizer(context_length=ctx, **kwargs)


def _load_full(net: nn.Module, path: Path) -> torch.Tensor | None:
    """Load full CLIP weights (open_clip's conversions applied); returns a saved continual_proj."""
    from open_clip.factory import load_state_dict
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    try:
        sd = load_state_dict(str(path), weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ConfigError(f"cannot read weights {path}: {e}") from None
    continual = {k: sd.pop(k) for k in [k for k in sd if k.split(".")[-1] == CONTINUAL_KEY
                                        or f".{CONTINUAL_KEY}." in k]}
    for k in ("logit_scale", "logit_bias"):
        own = getattr(net, k, None)
        if k in sd and isinstance(own, torch.Tensor) and sd[k].shape != own.shape and sd[k].numel() == 1:
            sd[k] = sd[k].reshape(own.shape)
    if "positional_embedding" in sd and hasattr(net, "positional_embedding"):
        resize_text_pos_embed(sd, net)
    resize_pos_embed(sd, net)
    result = net.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if CONTINUAL_KEY not in k]
    if missing or result.unexpected_keys:
        raise ConfigError(f"weights {path} do not fit the model: missing {missing[:5]}, "
                          f"unexpected {result.unexpected_keys[:5]}")
    if "visual.continual_proj" in continual:
        return continual["visual.continual_proj"]
    return None


def _image_target(net: nn.Module) -> nn.Module:
    v = net.visual
    return v.trunk if hasattr(v, "trunk") else v


def _text_target(net: nn.Module) -> nn.Module:
    return net.text if hasattr(net, "text") else net


def load_tower_weights(module: nn.Module, path: Path, prefix: str = "") -> None:
    """Load one tower's weights from a file (safetensors or a torch state dict).

    Keys may carry the model's prefix (`visual.`, `text.`) or `module.`. A state dict whose
    names differ (another implementation of the same network, e.g. EfficientNet-Lite0's
    reference code for a timm trunk) is mapped by order, which is accepted only when every
    shape agrees in order; trailing extra tensors (a classifier the tower has no use for) are
    ignored.
    """
    from open_clip.factory import load_state_dict

    if not path.is_file():
        raise ConfigError(f"tower weights {path} do not exist")
    sd = load_state_dict(str(path), weights_only=True)
    sd = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in sd.items()}
    own = module.state_dict()
    if isinstance(module, _clip_class()):  # text weights for a built-in (non-HF) text tower
        own = {k: v for k, v in own.items() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
    named = {k: v for k, v in sd.items() if k in own}
    if named and all(v.shape == own[k].shape for k, v in named.items()) and len(named) == len(own):
        module.load_state_dict(named, strict=False)
        log.info("loaded %d tensors from %s (%d unused)", len(named), path, len(sd) - len(named))
        return
    theirs, mine = list(sd.values()), list(own.items())
    if len(theirs) < len(mine) or any(t.shape != v.shape for t, (_, v) in zip(theirs, mine)):
        raise ConfigError(f"tower weights {path} do not fit the {module.__class__.__name__} tower: "
                          f"{len(theirs)} tensors for {len(mine)}, names and shapes differ")
    module.load_state_dict({k: t for t, (k, _) in zip(theirs, mine)}, strict=False)
    log.info("loaded %d tensors from %s by order (names differ; %d trailing ignored)", len(mine), path,
             len(theirs) - len(mine))


def _clip_class():
    from open_clip.model import CLIP

    return CLIP


# ----- the replay head ------------------------------------------------------------------------------
def _head(visual: nn.Module) -> tuple[str, nn.Module | torch.Tensor]:
    """The image projection: `visual.proj` (ViT) or the last layer of a timm tower's head."""
    if isinstance(getattr(visual, "proj", None), torch.Tensor):
        return "tensor", visual.proj
    head = getattr(visual, "head", None)
    if isinstance(head, nn.Sequential) and len(head) and not hasattr(visual, "proj"):
        return "module", head[-1]
    raise ConfigError(f"replay needs a projection after the image trunk; {visual.__class__.__name__} has none "
                      f"(ViT towers and timm towers with proj=linear|mlp are supported)")


def add_continual_proj(net: nn.Module, init: torch.Tensor | None = None) -> None:
    """Add `visual.continual_proj`, a copy of the image projection (or `init`), for replay samples."""
    visual = net.visual
    if hasattr(visual, CONTINUAL_KEY):
        return
    kind, proj = _head(visual)
    if kind == "tensor":
        value = (init if init is not None else proj.detach()).clone().to(proj.dtype)
        visual.register_parameter(CONTINUAL_KEY, nn.Parameter(value))
    else:
        mod = copy.deepcopy(proj)
        if init is not None:
            raise ConfigError("loading a saved continual_proj into a timm tower is not supported")
        visual.add_module(CONTINUAL_KEY, mod)


def image_features(visual: nn.Module, images: torch.Tensor, n_bio: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the trunk once over bio + replay images; project bio rows with `proj`, replay with `continual_proj`."""
    continual = getattr(visual, CONTINUAL_KEY, None)
    if continual is None or n_bio == images.shape[0]:
        if n_bio != images.shape[0]:
            raise TaxoclipError("replay images given but the model has no continual_proj")
        return visual(images), None
    kind, proj = _head(visual)
    if kind == "tensor":
        x = visual._embeds(images)
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)
        return pooled[:n_bio] @ visual.proj, pooled[n_bio:] @ continual
    x = visual.trunk(images)
    for layer in list(visual.head)[:-1]:
        x = layer(x)
    return visual.head[-1](x[:n_bio]), continual(x[n_bio:])


class FrozenTextMemo:
    """Text features through a fully frozen Hugging Face trunk, run once per distinct caption.

    With the trunk locked only the projection learns, and the trunk's pooled output of a caption
    never changes (it runs in eval mode: no dropout), so each caption's is computed once and
    kept: 700 taxa x 5 text types cost one trunk pass each instead of one per sample and step.
    """

    def __init__(self, text: nn.Module):
        self.text = text
        self.pooled: dict[bytes, torch.Tensor] = {}

    @staticmethod
    def applies(net: nn.Module) -> bool:
        text = getattr(net, "text", None)
        return (text is not None and hasattr(text, "transformer") and hasattr(text, "pooler")
                and not any(p.requires_grad for p in text.transformer.parameters()))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = [row.tobytes() for row in tokens.cpu().numpy()]
        missing = list({k: i for i, k in enumerate(keys) if k not in self.pooled}.values())
        if missing:
            trunk, was_training = self.text.transformer, self.text.transformer.training
            x = tokens[missing]
            mask = (x != self.text.config.pad_token_id).long()
            trunk.eval()
            with torch.no_grad():
                pooled = self.text.pooler(trunk(input_ids=x, attention_mask=mask), mask)
            trunk.train(was_training)
            for i, v in zip(missing, pooled):
                self.pooled[keys[i]] = v.clone()
        return self.text.proj(torch.stack([self.pooled[k] for k in keys]))


class ContrastiveModule(nn.Module):
    """The trained module: normalised features for biology and replay pairs, and the logit scale."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.text_memo = FrozenTextMemo(net.text) if FrozenTextMemo.applies(net) else None

    def forward(self, images: torch.Tensor, texts: torch.Tensor, replay_images: torch.Tensor | None = None,
                replay_texts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        n, m = images.shape[0], texts.shape[0]
        if replay_images is not None:
            images = torch.cat([images, replay_images])
            texts = torch.cat([texts, replay_texts])
        img, rep_img = image_features(self.net.visual, images, n)
        txt = self.text_memo(texts) if self.text_memo is not None else self.net.encode_text(texts)
        out = {"image": F.normalize(img, dim=-1), "text": F.normalize(txt[:m], dim=-1),
               "logit_scale": self.net.logit_scale.exp()}
        if rep_img is not None:
            out["replay_image"] = F.normalize(rep_img, dim=-1)
            out["replay_text"] = F.normalize(txt[m:], dim=-1)
        return out
