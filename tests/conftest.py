"""Shared fixtures: the bio-mini photo corpus (skipped when absent) and an offline HF cache."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

BIO_MINI = Path(os.environ.get("TAXOCLIP_BIO_MINI", Path(__file__).resolve().parents[2] / "shared" / "data" / "bio-mini"))


@pytest.fixture(scope="session")
def bio_mini() -> Path:
    """Root of ../shared/data/bio-mini; tests using it skip cleanly on a fresh clone."""
    if not (BIO_MINI / "taxa.csv").is_file():
        pytest.skip(f"bio-mini corpus not found at {BIO_MINI}")
    return BIO_MINI


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes taxoclip's cache into a temporary directory, never into ~/.cache."""
    monkeypatch.setenv("TAXOCLIP_CACHE", str(tmp_path_factory.getbasetemp() / "taxoclip-cache"))


@pytest.fixture(autouse=True)
def _strict_truncated_images():
    """Some libraries the tests import (MegaDetector's validator) set Pillow's process-wide
    LOAD_TRUNCATED_IMAGES at import; taxoclip's own default is to report a truncated photo."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = False


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory) -> Path:
    """An offline Hugging Face cache with a tiny random `imageomics/bioclip-2` and its vocabulary."""
    from helpers import make_hf_cache

    return make_hf_cache(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture
def offline_hub(hf_cache, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random model in the open_clip layout (32 px input)."""
    from helpers import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    from helpers import make_photos

    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def images(request) -> list[bytes]:
    """Twelve distinct JPEGs to serve over HTTP: real bio-mini photos when the corpus is here."""
    from data_helpers import tiny_jpegs

    try:
        root = request.getfixturevalue("bio_mini")
    except pytest.skip.Exception:
        root = None
    return tiny_jpegs(12, root)


@pytest.fixture
def giant_at_100k_pixels(monkeypatch):
    """Thresholds scaled down so that images of a few hundred kilopixels count as giant."""
    from taxoclip.io import decode

    monkeypatch.setattr(decode, "SHRINK_MIN_PIXELS", 100_000)
    monkeypatch.setattr(decode, "RESERVE_MIN_BYTES", 0)
    monkeypatch.setattr(decode, "_SLACK_BYTES", 0)
    monkeypatch.setattr(decode, "_BAND_BYTES", 20_000)  # many bands of a few rows each
    return decode
