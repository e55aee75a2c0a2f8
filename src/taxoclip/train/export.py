"""Export: a trained model in the open_clip layout, without the replay head.

The directory holds `open_clip_config.json` + `open_clip_model.safetensors` (fp32), and the
tokenizer files when the text tower is a Hugging Face model, so `taxoclip predict --model
DIR`, `taxoclip.models.load_model(DIR)` and `open_clip.create_model_and_transforms(
"local-dir:DIR")` all load it. It also holds the model's own vocabulary, `embeddings/` in
the published layout (the training taxa, or any taxa table, embedded by the exported model
as the Tree-of-Life vocabularies are), so `taxoclip predict --model DIR photos/` names
species with no further flags.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..taxonomy import Taxon
from .checkpoint import find_checkpoint, load_checkpoint
from .model import CONTINUAL_KEY

__all__ = ["export_model", "export_checkpoint", "export_vocabulary", "inference_state"]

# The tokenizer, and the Hugging Face config a text tower is built from (`config.json`).
_TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def inference_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the replay head, make every floating tensor fp32 and the logit scale a scalar."""
    out = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()
           if CONTINUAL_KEY not in k.split(".")}
    for k in ("logit_scale", "logit_bias"):
        if k in out and out[k].numel() == 1:
            out[k] = out[k].reshape(())
    return out


class _StateOnly(nn.Module):
    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):  # what save_model writes
        return self._state


def export_model(state: dict[str, torch.Tensor], model_cfg: dict, preprocess_cfg: dict, out_dir: str | Path,
                 tokenizer_dir: str = "", *, taxa: Sequence[Taxon] = (), device: str = "auto") -> Path:
    """Write the open_clip layout; with `taxa`, also the model's own vocabulary (`embeddings/`)."""
    from ..models import save_model

    cfg = copy.deepcopy(model_cfg)
    cfg.pop("nonscalar_logit_scale", None)
    text = cfg.get("text_cfg", {})
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    out = save_model(_StateOnly(inference_state(state)), cfg, out_dir, preprocess_cfg)
    if tokenizer_dir:
        for name in _TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, out / name)
    if taxa:
        export_vocabulary(out, taxa, device)
    return out


def export_vocabulary(model_dir: str | Path, taxa: Sequence[Taxon], device: str = "auto") -> Path:
    """Embed `taxa` with the exported model ("<7 ranks> <common name>" through the OpenAI
    templates, as the published vocabularies) and write `model_dir/embeddings/`."""
    from ..models import load_model
    from ..textbank import TextBank

    model = load_model(str(model_dir), device=device, precision="fp32")
    bank = TextBank.from_taxa(model, list(taxa), name=f"{model_dir} training taxa")
    return bank.save_published(Path(model_dir) / "embeddings")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, vocabulary: str = "train") -> Path:
    """Export a training checkpoint (a file, a run directory or its checkpoints/ folder).

    `vocabulary`: "train" (the taxa of the run's training data), "none", or a taxa table.
    """
    from .evaluate import load_taxa

    ck = load_checkpoint(find_checkpoint(checkpoint))
    meta = ck["meta"]
    data = meta.get("config", {}).get("data", {})
    taxa = load_taxa(vocabulary, data.get("train", []), data.get("split", "train"), [])
    return export_model(ck["model"], meta["model_cfg"], meta["preprocess_cfg"], out_dir, meta.get("tokenizer_dir", ""),
                        taxa=taxa)
