"""Same answers as pybioclip: identical top-k taxa in the same order, scores within 1e-4 relative.

Both tools run as users run them (their CLIs, in subprocesses) against one offline Hugging Face
cache holding a tiny random `imageomics/bioclip-2` (224 px, as pybioclip hard-codes) and a
vocabulary in the published layout.
"""
import importlib.util
import os
import subprocess
import sys

import pandas as pd
import pytest

from helpers import make_hf_cache, make_photos

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bioclip") is None, reason="pybioclip not installed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    cache = make_hf_cache(root / "hf", image_size=224, patch_size=32, n_taxa=2000, zero_columns=())
    photos = make_photos(root / "photos", n=5, seed=3)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TAXOCLIP_CACHE": str(root / "tc"),
           "TORCHDYNAMO_DISABLE": "1"}  # pybioclip torch.compiles; eager gives the same maths, faster to start
    return root, [str(p) for p in photos], env


def _run(cmd, env, out):
    subprocess.run(cmd + ["--output", str(out)], env=env, check=True, capture_output=True, text=True)
    return pd.read_csv(out, keep_default_na=False)


@pytest.mark.parametrize("args", [["--rank", "species", "--k", "5"], ["--rank", "family", "--k", "5"],
                                  ["--cls", "red fox,grey wolf,oak tree,sunflower"]])
def test_same_answers_as_pybioclip(setup, args):
    root, photos, env = setup
    tag = args[1].replace(",", "_").replace(" ", "")
    ours = _run([sys.executable, "-m", "taxoclip", "predict", *photos, *args, "--model", "bioclip-2", "--precision", "fp32"], env,
                root / f"ours-{tag}.csv")
    theirs = _run([sys.executable, "-m", "bioclip", "predict", *photos, *args], env, root / f"theirs-{tag}.csv")
    if "species" in theirs:  # pybioclip writes "Genus " for genus-level entries; we write ""
        theirs["species"] = theirs.species.where(theirs.species_epithet != "", "")
    keys = [c for c in theirs.columns if c != "score"]
    assert len(ours) == len(theirs) > 0
    assert ours[keys].values.tolist() == theirs[keys].values.tolist()
    rel = ((ours.score - theirs.score).abs() / theirs.score).max()
    assert rel < 1e-4
