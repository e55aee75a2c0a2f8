"""Model cards: the short names users type and what we know about each published model.

A card ties an id (`bioclip-2`, `hf-hub:imageomics/bioclip-2`) to the Tree-of-Life
vocabulary trained with it and to its preprocessing. Adding a model means adding a card.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelCard", "register", "find_card", "list_cards"]


@dataclass(frozen=True)
class ModelCard:
    name: str  # short alias
    source: str  # an id `taxoclip.models.load_model` resolves (hf-hub:…, local dir, open_clip name)
    description: str
    vocabulary_repo: str | None = None  # HF dataset repo holding embeddings/txt_emb_species.{npy,json}
    # Overrides of the preprocessing read from the model's config (open_clip PreprocessCfg keys).
    preprocess: dict = field(default_factory=dict)
    pretrained: str | None = None  # open_clip tag or file, for open_clip names
    bundled: bool = False  # shipped inside a package (`source` is `pkg:…`): works offline, checked on load
    # Decode JPEGs at reduced size (draft mode) when the model's input is far smaller than photos;
    # None: only in reduced precision (fp32 stays faithful to pybioclip's decoding).
    draft_decode: bool | None = None
    batch_size: int | None = None  # images per model call on a CPU, where the model's size changes the best one
    # How a taxa table becomes class texts for this model (`--taxa`): "vocabulary" = "<7 ranks> <common
    # name>" as the published vocabularies, or a caption type it was trained on; and the templates.
    vocabulary_text: str = "vocabulary"
    vocabulary_templates: str = "openai"
    compile_auto: bool = True  # `--compile auto` compiles long runs; off where compiling costs more than it gains


_CARDS: dict[str, ModelCard] = {}

# BioCLIP's shards hold 224x224 images squashed (not cropped) from the originals, and pybioclip
# feeds the model the same way: float tensor, bilinear resize with antialiasing to 224x224.
# open_clip's own default for these configs (resize the shorter side, centre-crop) cuts off
# parts of wide photos that the model saw in training, so we follow the training data.
_BIOCLIP_PREPROCESS = {"resize_mode": "squash", "interpolation": "bilinear"}


def register(card: ModelCard) -> ModelCard:
    _CARDS[card.name] = card
    return card


def find_card(model_id: str) -> ModelCard | None:
    """The card whose alias or source is `model_id`, if any."""
    if model_id in _CARDS:
        return _CARDS[model_id]
    return next((c for c in _CARDS.values() if c.source == model_id), None)


def list_cards() -> list[ModelCard]:
    return list(_CARDS.values())


register(ModelCard(
    name="taxoclip-mini",
    source="pkg:taxoclip/bundled/taxoclip-mini",
    description="taxoclip-mini (bundled, offline): EfficientNet-Lite0 + MiniLM-L6, tol-mini vocabulary (300K species)",
    bundled=True,
    draft_decode=True,
    batch_size=64,
    vocabulary_text="sci",  # "a photo of Genus epithet.", a caption it was trained on, once per taxon
    vocabulary_templates="none",
    compile_auto=False,
))
register(ModelCard(
    name="bioclip-2",
    source="hf-hub:imageomics/bioclip-2",
    description="BioCLIP 2: ViT-L/14, trained on TreeOfLife-200M (952K taxa)",
    vocabulary_repo="imageomics/TreeOfLife-200M",
    preprocess=_BIOCLIP_PREPROCESS,
))
register(ModelCard(
    name="bioclip",
    source="hf-hub:imageomics/bioclip",
    description="BioCLIP: ViT-B/16, trained on TreeOfLife-10M (454K taxa)",
    vocabulary_repo="imageomics/TreeOfLife-10M",
    preprocess=_BIOCLIP_PREPROCESS,
))
