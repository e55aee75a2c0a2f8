"""The bundled model: `taxoclip predict PHOTO` answers offline on a fresh install, and a damaged
install says which file to restore."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bio_mini_photo
from taxoclip import TreeOfLifeClassifier
from taxoclip.models import (DEFAULT_MODEL, ModelCard, ModelLoadError, find_card, list_cards, load_model, register,
                             resolve)
from taxoclip.models.loading import package_path

BUNDLE = package_path(find_card("taxoclip-mini").source)


def _offline_env(tmp_path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-hub"),
               TAXOCLIP_CACHE=str(tmp_path / "cache"))
    env.pop("TAXOCLIP_TEST_SIGKILL_AT_STEP", None)
    return env


def test_default_model_is_the_bundled_one():
    assert DEFAULT_MODEL == "taxoclip-mini"
    src = resolve(DEFAULT_MODEL)
    assert src.card.bundled and src.weights.is_file() and src.weights.is_relative_to(BUNDLE)


def test_shipped_files_fit_the_size_budget():
    manifest = json.loads((BUNDLE / "MANIFEST.json").read_text())
    assert sum(f["size"] for f in manifest["files"].values()) <= 100_000_000
    assert manifest["vocabulary"]["taxa"] >= 300_000


def test_predict_without_network_or_flags(photos, tmp_path):
    out = subprocess.run([sys.executable, "-m", "taxoclip", "predict", str(photos[0]), "--k", "3"],
                         capture_output=True, text=True, env=_offline_env(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("file_name,kingdom,phylum,class,order,family,genus,species_epithet,species")
    assert len(lines) == 4 and all(line.split(",")[1] for line in lines[1:])  # every answer has a kingdom


def test_image_only_prediction_leaves_the_text_tower_on_disk(photos):
    clf = TreeOfLifeClassifier(precision="fp32", workers=0)
    rows = clf.predict([str(photos[0])], k=2)
    assert len(rows) == 2 and not clf.model._text_loaded
    assert len(clf.bank) >= 300_000


@pytest.mark.parametrize("set_name", ["apple", "bees", "seedlings"])
def test_bundled_model_names_real_photos(bio_mini, tmp_path, set_name):
    data, rec = bio_mini_photo(bio_mini, set_name)
    photo = tmp_path / f"{rec['key']}.jpg"
    photo.write_bytes(data)
    clf = TreeOfLifeClassifier(precision="fp32", workers=0)  # the whole tol-mini vocabulary
    best = clf.predict([str(photo)], k=1)[0]
    assert best["species"] == rec["species"], (best, rec["species"])
    assert best["family"] == rec["family"]


def _copy_with(tmp_path: Path, change) -> ModelCard:
    """A copy of the bundle (large files linked) registered as a bundled card, after `change(dir)`."""
    copy = tmp_path / "bundle"
    for f in BUNDLE.rglob("*"):
        if f.is_file():
            dst = copy / f.relative_to(BUNDLE)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f)
    change(copy)
    return register(ModelCard(name=f"mini-copy-{tmp_path.name}", source=str(copy), description="test copy",
                              bundled=True))


def test_missing_bundled_file_names_it_and_the_fix(tmp_path):
    card = _copy_with(tmp_path, lambda d: (d / "embeddings" / "vocabulary.safetensors").unlink())
    with pytest.raises(ModelLoadError) as e:
        TreeOfLifeClassifier(card.name)
    msg = str(e.value)
    assert "vocabulary.safetensors is missing" in msg and "reinstall taxoclip" in msg and "\n" not in msg


def test_truncated_bundled_weights_name_the_file(tmp_path):
    def truncate(d):
        w = d / "open_clip_model.safetensors"
        data = w.read_bytes()[:1000]
        w.unlink()
        w.write_bytes(data)
    card = _copy_with(tmp_path, truncate)
    with pytest.raises(ModelLoadError) as e:
        load_model(card.name)
    assert "open_clip_model.safetensors has 1,000 bytes" in str(e.value) and "reinstall" in str(e.value)


def test_damaged_bundle_is_one_line_from_the_cli(tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(BUNDLE, copy, symlinks=False, ignore=shutil.ignore_patterns("*.safetensors", "*.parquet"))
    code = ("import sys; from taxoclip.models import ModelCard, register; "
            f"register(ModelCard(name='broken', source={str(copy)!r}, description='', bundled=True)); "
            "from taxoclip.cli import main; sys.exit(main(sys.argv[1:]))")
    img = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 120, 30)).save(img, "JPEG")
    photo = tmp_path / "p.jpg"
    photo.write_bytes(img.getvalue())
    out = subprocess.run([sys.executable, "-c", code, "predict", str(photo), "--model", "broken"],
                         capture_output=True, text=True, env=_offline_env(tmp_path), timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "is missing" in out.stderr and "reinstall taxoclip" in out.stderr


def test_first_run_prepares_the_tower_in_a_child_process_with_the_same_answers(photos, tmp_path):
    """`taxoclip predict` builds the bundled model's tower in a child, once, before it imports
    torch (so open_clip and timm never sit in its memory); a run then answers exactly as one
    whose tower was built in-process."""
    # warmup finds a bundled model by its id without importing the registry (which imports torch)
    shipped = [c for c in list_cards() if c.bundled and c.source.startswith("pkg:")]
    assert shipped and all(c.source == f"pkg:taxoclip/bundled/{c.name}" for c in shipped)
    child_cache = _offline_env(tmp_path / "child")
    probe = ("import sys; from taxoclip.warmup import prepare_bundled as p; "
             "print(p('bioclip-2'), p('yolox-tiny-animals'), p('taxoclip-mini', text=True), "
             "p('taxoclip-mini'), p('taxoclip-mini'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=child_cache, timeout=300)
    assert out.returncode == 0, out.stderr
    # not bundled, not a CLIP model, text wanted: no child; then one child, and the second call finds it done
    assert out.stdout.split() == ["False", "False", "False", "True", "False", "False"]
    assert len(list(Path(child_cache["TAXOCLIP_CACHE"], "towers").glob("*/tower.pt"))) == 1

    def predict(env, *, torch_first: bool) -> str:
        code = ("import sys; " + ("import torch; " if torch_first else "") +
                "from taxoclip.cli import main; sys.exit(main(sys.argv[1:]))")
        done = subprocess.run([sys.executable, "-c", code, "predict", str(photos[0]), "--k", "5"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    in_process = _offline_env(tmp_path / "in-process")
    assert predict(child_cache, torch_first=False) == predict(in_process, torch_first=True)
    assert not Path(in_process["TAXOCLIP_CACHE"], "prepared").exists()  # torch was there first: no child
