"""Training on real photos: bio-mini's butterflies in their raw layout (captions rendered from JSON)."""
from __future__ import annotations

import csv

from taxoclip.train.config import load_config
from taxoclip.train.data import find_shards
from taxoclip.train.loop import train


def test_a_few_steps_on_butterflies_with_zero_shot_eval(bio_mini, tmp_path):
    shards = find_shards([str(bio_mini / "butterflies")], "train")
    assert len(shards.urls) == 4 and all("/train-" in u for u in shards.urls)
    cfg = load_config(None, [
        f"data.train=[{bio_mini / 'butterflies'}]", "model.name=taxoclip-tiny-vit", "data.batch_size=32",
        "data.workers=0", "data.streams=4", "data.shuffle_buffer=64", "steps=4", "optim.warmup=2",
        f"eval.data=[{bio_mini / 'butterflies'}]", "eval.split=val", "eval.max_samples=64", "eval.taxa=train",
        f"out={tmp_path / 'run'}", "tensorboard=false", "log_every=1"])
    result = train(cfg)
    assert result.eval["classes"] == 100  # 101 labels, two of them one species
    assert result.eval["top1_kingdom"] == 1.0
    with open(tmp_path / "run" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["loss"]) > 0 and (result.export / "open_clip_config.json").is_file()
