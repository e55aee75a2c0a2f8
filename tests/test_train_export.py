"""Export round trip: a trained run's export/ loads in taxoclip and in plain open_clip, same embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from taxoclip.train.checkpoint import find_checkpoint, load_checkpoint
from taxoclip.train.config import ModelConfig, load_config
from taxoclip.train.loop import train
from taxoclip.train.model import ContrastiveModule, build_model
from taxoclip.train.synthetic import write_shards

TEXTS = ["a photo of Danaus plexippus.", "a photo of Animalia Arthropoda Insecta Lepidoptera."]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_shards(root / "bio", layout="builder", shards=2, per_shard=32)
    write_shards(root / "replay", layout="caption", shards=2, per_shard=16, seed=2)
    cfg = load_config(None, [f"data.train=[{root / 'bio'}]", f"data.replay=[{root / 'replay'}]",
                             "data.replay_batch_size=4", "data.batch_size=8", "data.workers=0", "data.streams=2",
                             "steps=3", "optim.warmup=1", "optim.lr=1e-3", f"out={root / 'run'}",
                             "tensorboard=false"])
    result = train(cfg)
    images = []
    rng = np.random.default_rng(0)
    for i in range(2):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        images.append(p)
    return root, result.export, images


def _reference(root, images):
    """Embeddings from the training checkpoint through the training module's biology path."""
    ck = load_checkpoint(find_checkpoint(root / "run"))
    built = build_model(ModelConfig(name="taxoclip-tiny-vit"), replay=True)
    built.net.load_state_dict(ck["model"])
    module = ContrastiveModule(built.net).eval()
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    pixels = torch.stack([(torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) / 255 - mean)
                          / std for p in images])
    with torch.no_grad():
        out = module(pixels, built.tokenizer(TEXTS))
    return out["image"], out["text"]


def test_exported_directory_has_the_open_clip_layout_without_replay_head(run):
    _, export, _ = run
    cfg = json.loads((export / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["embed_dim"] == 32 and cfg["preprocess_cfg"]["resize_mode"] == "squash"
    from safetensors import safe_open

    with safe_open(str(export / "open_clip_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys if f.get_tensor(k).is_floating_point())
    assert "visual.proj" in keys and not any("continual_proj" in k for k in keys)


def test_same_embeddings_in_taxoclip_open_clip_and_training(run):
    import open_clip

    from taxoclip.models import load_model

    root, export, images = run
    ref_img, ref_txt = _reference(root, images)

    model = load_model(str(export), precision="fp32", device="cpu", text=True)
    pixels = torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in images])
    assert torch.allclose(model.encode_image(pixels), ref_img, atol=1e-5)
    assert torch.allclose(model.encode_text(TEXTS), ref_txt, atol=1e-5)

    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}")
    tok = open_clip.get_tokenizer(f"local-dir:{export}")
    oc.eval()
    with torch.no_grad():
        img = oc.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images]), normalize=True)
        txt = oc.encode_text(tok(TEXTS), normalize=True)
    assert torch.allclose(img, ref_img, atol=1e-5) and torch.allclose(txt, ref_txt, atol=1e-5)


def test_taxoclip_embed_and_predict_load_the_export(run, tmp_path):
    cli = pytest.importorskip("taxoclip.cli")
    try:
        import taxoclip.classify  # noqa: F401  (the lead's inference module)
    except ImportError:
        pytest.skip("taxoclip.classify is not available")
    root, export, images = run
    ref_img, _ = _reference(root, images)
    out = tmp_path / "emb.jsonl"
    rc = cli.main(["embed", *map(str, images), "--model", str(export), "--precision", "fp32", "--normalize",
                   "--workers", "0", "-o", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = torch.tensor([r["embedding"] for r in sorted(rows, key=lambda r: r["file_name"])])
    assert torch.allclose(got, ref_img, atol=1e-5)
    pred = tmp_path / "pred.csv"
    rc = cli.main(["predict", *map(str, images), "--model", str(export), "--cls", "monarch,swallowtail",
                   "--precision", "fp32", "--workers", "0", "-o", str(pred)])
    assert rc == 0 and len(pred.read_text().splitlines()) == 1 + 2 * 2


def test_export_command_writes_a_checkpoint(run, tmp_path):
    from taxoclip.cli import main

    root, export, _ = run
    assert main(["train", "export", str(root / "run"), str(tmp_path / "again")]) == 0
    from safetensors.torch import load_file

    a = load_file(export / "open_clip_model.safetensors")
    b = load_file(tmp_path / "again" / "open_clip_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _training_taxa(root):
    from taxoclip.train.evaluate import load_taxa

    return load_taxa("train", [str(root / "bio")], "train", [])


def test_export_carries_its_own_vocabulary_of_the_training_taxa(run):
    """`taxoclip predict --model EXPORT photos/` names species with no flags, as bioclip-2 does."""
    from taxoclip.models import load_model
    from taxoclip.taxonomy import Taxon, apply_templates

    root, export, images = run
    names = json.loads((export / "embeddings" / "txt_emb_species.json").read_text())
    emb = np.load(export / "embeddings" / "txt_emb_species.npy")
    taxa = _training_taxa(root)
    assert sorted(Taxon.from_tol_entry(e) for e in names) == sorted(taxa)
    assert emb.shape == (32, len(names)) and emb.dtype == np.float32

    # Each column is the normalised mean of the model's template embeddings of its taxon's text.
    model = load_model(str(export), precision="fp32", device="cpu", text=True)
    first = Taxon.from_tol_entry(names[0])
    expected = torch.nn.functional.normalize(model.encode_text(apply_templates(first.vocabulary_text, "openai")).mean(0),
                                             dim=0)
    assert torch.allclose(torch.from_numpy(emb[:, 0]), expected, atol=1e-5)

    # And predict uses it: the top species is the best-matching column, its score the softmax.
    from taxoclip import TreeOfLifeClassifier

    clf = TreeOfLifeClassifier(str(export), precision="fp32", device="cpu", workers=0)
    rows = clf.predict([str(p) for p in images], k=1)
    pixels = torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in images])
    logits = model.logit_scale * model.encode_image(pixels) @ torch.from_numpy(emb)
    probs = logits.softmax(-1)
    for row, p in zip(rows, probs):
        best = Taxon.from_tol_entry(names[int(p.argmax())])
        assert (row["genus"], row["species_epithet"]) == (best.genus, best.ranks[-1])
        assert row["score"] == pytest.approx(float(p.max()), rel=1e-4)


def test_export_without_vocabulary_asks_for_one(run, tmp_path):
    from taxoclip.cli import main

    root, _, images = run
    out = tmp_path / "plain"
    assert main(["train", "export", str(root / "run"), str(out), "--vocabulary", "none"]) == 0
    assert not (out / "embeddings").exists()
    from taxoclip import TreeOfLifeClassifier
    from taxoclip.textbank import VocabularyError

    with pytest.raises(VocabularyError, match="--cls"):
        TreeOfLifeClassifier(str(out), precision="fp32", device="cpu")
