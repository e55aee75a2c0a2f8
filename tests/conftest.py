"""Shared fixtures: the bio-mini photo corpus (skipped when absent) and an offline HF cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
