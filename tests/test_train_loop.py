"""The training step and run, in one process: accumulation, precisions, replay, evaluation, logs."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from taxoclip.train.checkpoint import find_checkpoint, load_checkpoint
from taxoclip.train.config import load_config
from taxoclip.train.loop import train
from taxoclip.train.optim import lr_at, param_groups
from taxoclip.train.synthetic import write_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loopdata")
    write_shards(root / "bio", layout="builder", shards=4, per_shard=32, val_fraction=0.2)
    write_shards(root / "replay", layout="caption", shards=2, per_shard=32, seed=9)
    return root


def _run(data, out, *overrides):
    cfg = load_config(None, [f"data.train=[{data / 'bio'}]", f"out={out}", "data.workers=0", "data.streams=2",
                             "log_every=1", "tensorboard=false", "optim.warmup=2", "optim.lr=1e-3", *overrides])
    return train(cfg)


def _log(out):
    with open(out / "log.csv") as fh:
        return list(csv.DictReader(fh))


def _weights(out):
    return load_checkpoint(find_checkpoint(out))["model"]


def test_accumulation_equals_one_big_batch(data, tmp_path):
    _run(data, tmp_path / "big", "steps=3", "data.batch_size=16", "export=false")
    _run(data, tmp_path / "acc", "steps=3", "data.batch_size=8", "optim.accum=2", "export=false")
    big, acc = _log(tmp_path / "big"), _log(tmp_path / "acc")
    for a, b in zip(big, acc):
        assert a["text_type"] == b["text_type"]
        assert math.isclose(float(a["loss"]), float(b["loss"]), rel_tol=1e-5)
    wa, wb = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    assert torch.allclose(wa["logit_scale"], wb["logit_scale"], atol=1e-6)  # its gradient is counted once
    # Adam divides by the gradient's running RMS, so float rounding in near-zero gradients (summed in another
    # order by 2 x 8 than by 1 x 16) can move a weight by a few 1e-5 after 3 steps (seen on AVX2-only CPUs).
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_replay_run_logs_both_losses_and_exports_without_the_replay_head(data, tmp_path):
    res = _run(data, tmp_path / "r", "steps=4", "data.batch_size=8", f"data.replay=[{data / 'replay'}]",
               "data.replay_batch_size=4", "save_every=2", "tensorboard=true")
    if __import__("importlib").util.find_spec("tensorboard"):
        assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    rows = _log(tmp_path / "r")
    assert len(rows) == 4 and all(float(r["loss_replay"]) > 0 for r in rows)
    assert all(math.isclose(float(r["loss"]), float(r["loss_bio"]) + float(r["loss_replay"]), rel_tol=1e-5)
               for r in rows)
    ck = load_checkpoint(find_checkpoint(tmp_path / "r"))
    assert "visual.continual_proj" in ck["model"] and ck["step"] == 4
    from safetensors.torch import load_file

    exported = load_file(res.export / "open_clip_model.safetensors")
    assert "visual.continual_proj" not in exported and "visual.proj" in exported


def test_zero_shot_evaluation_reports_every_rank(data, tmp_path):
    res = _run(data, tmp_path / "e", "steps=2", "data.batch_size=8", f"eval.data=[{data / 'bio'}]",
               "eval.split=val", "export=false")
    for rank in ("kingdom", "phylum", "class", "order", "family", "genus", "species"):
        assert 0 <= res.eval[f"top1_{rank}"] <= 1
    assert res.eval["top1_kingdom"] == 1.0  # every synthetic taxon is an animal
    assert res.eval["classes"] == 8
    with open(tmp_path / "e" / "eval.csv") as fh:
        assert list(csv.DictReader(fh))[-1]["step"] == "2"


@pytest.mark.parametrize("precision", ["bf16", "pure_bf16", "amp_bf16"])
def test_low_precision_modes_train(data, tmp_path, precision):
    res = _run(data, tmp_path / precision, "steps=3", "data.batch_size=8", f"precision={precision}", "export=false")
    assert math.isfinite(res.last_loss)
    ck = load_checkpoint(find_checkpoint(tmp_path / precision))
    want = torch.bfloat16 if precision == "pure_bf16" else torch.float32
    assert ck["model"]["visual.proj"].dtype == want  # bf16 keeps fp32 master weights
    assert ck["model"]["logit_scale"].dtype == torch.float32


def test_logit_scale_is_clamped_to_ln_100(data, tmp_path):
    from taxoclip.train.config import ModelConfig
    from taxoclip.train.model import build_model

    built = build_model(ModelConfig(name="taxoclip-tiny-vit"))
    with torch.no_grad():
        built.net.logit_scale.fill_(math.log(100) - 1e-4)
    cfg = load_config(None, [f"data.train=[{data / 'bio'}]", "steps=1", "data.workers=0", "data.streams=2",
                             "data.batch_size=8", "optim.lr=1.0", "optim.warmup=1"])
    from taxoclip.train.data import make_loader
    from taxoclip.train.loop import DistInfo, Trainer

    tr = Trainer(cfg, DistInfo(), built)
    b = next(iter(make_loader(cfg, rank=0, world=1, tokenizer=built.tokenizer, image_size=32, start_micro=0,
                              start_positions=None)))
    built.net.logit_scale.register_hook(lambda g: -torch.ones_like(g))  # push it up hard
    tr.train_step([b], 1.0)
    assert built.net.logit_scale.item() <= math.log(100) + 1e-6


def test_weight_decay_groups_follow_open_clip():
    from taxoclip.train.config import ModelConfig
    from taxoclip.train.model import build_model

    net = build_model(ModelConfig(name="taxoclip-tiny-vit"), replay=True).net
    groups = param_groups(list(net.named_parameters()), 0.2)
    no_wd, wd = set(groups[0]["names"]), set(groups[1]["names"])
    assert {"logit_scale", "visual.class_embedding", "ln_final.weight", "visual.ln_post.bias"} <= no_wd
    assert {"visual.proj", "visual.continual_proj", "text_projection", "token_embedding.weight"} <= wd
    assert not any("bias" in n for n in wd)


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    from taxoclip.train.config import OptimConfig

    cfg = OptimConfig(lr=1e-4, warmup=10)
    assert lr_at(0, 100, cfg) == pytest.approx(1e-5) and lr_at(9, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(55, 100, cfg) == pytest.approx(0.5e-4) and lr_at(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)


def test_gradient_checkpointing_changes_memory_not_results(data):
    from taxoclip.train.config import ModelConfig
    from taxoclip.train.data import make_loader
    from taxoclip.train.loop import DistInfo, Trainer
    from taxoclip.train.model import build_model

    cfg = load_config(None, [f"data.train=[{data / 'bio'}]", "steps=1", "data.workers=0", "data.streams=2",
                             "data.batch_size=8"])
    b = next(iter(make_loader(cfg, rank=0, world=1, tokenizer=build_model(ModelConfig()).tokenizer, image_size=32,
                              start_micro=0, start_positions=None)))
    results = []
    for ckpt in (False, True):
        cfg.model.grad_checkpointing = ckpt
        tr = Trainer(cfg, DistInfo())
        loss = tr.train_step([b], 1e-3)["loss"].item()
        results.append((loss, tr.net.visual.proj.detach().clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_compiled_training_matches_eager(data, tmp_path):
    """`model.compile: true` is a speed option only: the same losses and weights as eager."""
    eager = _run(data, tmp_path / "eager", "steps=2", "data.batch_size=8", "export=false")
    compiled = _run(data, tmp_path / "compiled", "steps=2", "data.batch_size=8", "export=false", "model.compile=true")
    a, b = _log(tmp_path / "eager"), _log(tmp_path / "compiled")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-4)
    assert math.isfinite(compiled.last_loss) and compiled.last_loss == pytest.approx(eager.last_loss, rel=1e-4)
    wa, wb = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert wa.keys() == wb.keys()
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4
