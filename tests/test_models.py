"""Loading models by every kind of id, precision choice, and errors that name the input."""
import json
import shutil

import pytest
import torch

from taxoclip.models import ModelLoadError, load_model, resolve, resolve_precision, save_model


def _reference(model_dir):
    """The same weights loaded the plain open_clip way, fp32."""
    import open_clip

    return open_clip.create_model(f"local-dir:{model_dir}", precision="fp32").eval()


def test_local_dir_matches_open_clip_exactly_in_fp32(tiny_model_dir):
    ref = _reference(tiny_model_dir)
    m = load_model(str(tiny_model_dir), precision="fp32", text=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want_img = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
        want_txt = torch.nn.functional.normalize(ref.encode_text(m.tokenizer(["a photo of a fox"])), dim=-1)
    assert torch.equal(m.encode_image(x), want_img)
    assert torch.equal(m.encode_text(["a photo of a fox"]), want_txt)
    assert m.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))
    assert m.embed_dim == 32 and m.preprocess.size == 32


def test_text_tower_loads_on_first_use(tiny_model_dir):
    m = load_model(f"local-dir:{tiny_model_dir}", precision="fp32")
    assert any(p.is_meta for p in m.net.transformer.parameters())
    assert m.encode_text(["x", "y"]).shape == (2, 32)
    assert not any(p.is_meta for p in m.net.parameters())


def test_bf16_embeddings_stay_close_to_fp32(tiny_model_dir):
    x = torch.randn(4, 3, 32, 32)
    a = load_model(str(tiny_model_dir), precision="fp32").encode_image(x)
    b = load_model(str(tiny_model_dir), precision="bf16").encode_image(x)
    assert b.dtype == torch.float32
    assert (a * b).sum(-1).min() > 0.999


def test_alias_and_hf_hub_id_resolve_through_the_offline_cache(offline_hub):
    m = load_model("bioclip-2", precision="fp32")
    assert m.id == "bioclip-2" and m.card.vocabulary_repo == "imageomics/TreeOfLife-200M"
    # BioCLIP checkpoints see squashed images, as in their training shards and in pybioclip
    assert m.preprocess.resize_mode == "squash" and m.preprocess.interpolation == "bilinear"
    assert resolve("hf-hub:imageomics/bioclip-2").card.name == "bioclip-2"


def test_missing_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"bioclip-2.*not in .*HF_HUB_OFFLINE"):
        load_model("bioclip-2")


def test_unknown_model_id_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_open_clip_name_without_weights_asks_for_a_tag():
    with pytest.raises(ModelLoadError, match="--pretrained"):
        load_model("ViT-B-32")


def test_directory_without_weights_is_a_clear_error(tiny_model_dir, tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", d)
    with pytest.raises(ModelLoadError, match="has no weights"):
        load_model(str(d))


def test_pytorch_bin_checkpoint_loads_too(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", d)
    torch.save(load_file(tiny_model_dir / "open_clip_model.safetensors"), d / "open_clip_pytorch_model.bin")
    x = torch.randn(2, 3, 32, 32)
    a = load_model(str(tiny_model_dir), precision="fp32").encode_image(x)
    assert torch.equal(load_model(str(d), precision="fp32").encode_image(x), a)


def test_save_model_round_trip(tiny_model_dir, tmp_path):
    m = load_model(str(tiny_model_dir), precision="fp32", text=True)
    cfg = json.loads((tiny_model_dir / "open_clip_config.json").read_text())
    out = save_model(m.net, cfg["model_cfg"], tmp_path / "copy", cfg["preprocess_cfg"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_model(str(out), precision="fp32").encode_image(x), m.encode_image(x))


def test_precision_choice():
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int3", "cpu")


def test_open_clip_name_with_a_weights_file(tiny_model_dir, monkeypatch):
    import open_clip
    from open_clip import factory

    cfg = json.loads((tiny_model_dir / "open_clip_config.json").read_text())["model_cfg"]
    monkeypatch.setitem(factory._MODEL_CONFIGS, "taxoclip-test-tiny", cfg)
    assert "taxoclip-test-tiny" in open_clip.list_models()
    weights = str(tiny_model_dir / "open_clip_model.safetensors")
    x = torch.randn(2, 3, 32, 32)
    m = load_model("taxoclip-test-tiny", pretrained=weights, precision="fp32")
    assert torch.equal(m.encode_image(x), load_model(str(tiny_model_dir), precision="fp32").encode_image(x))
    with pytest.raises(ModelLoadError, match="neither a file nor one of its tags"):
        load_model("taxoclip-test-tiny", pretrained="no-such-tag")
