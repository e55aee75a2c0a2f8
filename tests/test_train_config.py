"""Recipes: YAML files with dotted command-line overrides, typed and checked."""
from __future__ import annotations

from pathlib import Path

import pytest

from taxoclip.train.config import ConfigError, load_config, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 5e-4\n  betas: [0.9, 0.95]\ndata:\n  train: [a.tar]\nsteps: 10\n")
    cfg = load_config(recipe, ["optim.lr=1e-3", "data.batch_size=32", "data.text_types=taxon", "loss.local=false",
                               "data.train=[x.tar,y.tar]"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.batch_size == 32 and cfg.data.text_types == ["taxon"]
    assert cfg.loss.local is False and cfg.data.train == ["x.tar", "y.tar"]


def test_yaml_reads_1e_4_as_a_float(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 1e-4\n")
    assert load_config(recipe).optim.lr == 1e-4


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("data.batch_size=big", "cannot read 'big' as int"),
    ("steps", "not key=value"),
    ("steps.x=1", "has no sub-keys"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_validation_catches_inconsistent_settings():
    with pytest.raises(ConfigError, match="no training data"):
        validate(load_config(None, ["steps=1"]))
    with pytest.raises(ConfigError, match="replay_batch_size"):
        validate(load_config(None, ["steps=1", "data.train=[a]", "data.replay_batch_size=4"]))
    with pytest.raises(ConfigError, match="precision"):
        validate(load_config(None, ["steps=1", "data.train=[a]", "precision=fp8"]))


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_recipes_parse(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.data.batch_size > 0


def test_reference_recipe_matches_bioclip2():
    cfg = load_config(CONFIGS / "bioclip2-vitl14.yaml")
    assert cfg.model.name == "ViT-L-14" and cfg.precision == "amp_bf16" and cfg.model.grad_checkpointing
    assert (cfg.data.batch_size, cfg.data.replay_batch_size) == (2816, 320)
    assert (cfg.optim.lr, cfg.optim.warmup, cfg.epochs) == (1e-4, 1875, 30)
    assert (cfg.optim.betas, cfg.optim.eps, cfg.optim.weight_decay) == ((0.9, 0.98), 1e-6, 0.2)
    assert cfg.loss.local and cfg.data.text_types == ["sci", "com", "taxon", "sci_com", "taxon_com"]
