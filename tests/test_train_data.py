"""The training data pipeline: global batches that do not depend on processes or workers,
exact positions for resuming, split selection and captions in every shard layout."""
from __future__ import annotations

import json

import pytest
import torch

from taxoclip.taxonomy import Taxon, render_caption
from taxoclip.train.config import ConfigError, load_config
from taxoclip.train.data import (Position, StreamReader, accept_bio, bio_caption, find_shards,
                                 make_loader, read_samples, text_type_for_step)
from taxoclip.train.model import make_tokenizer
from taxoclip.train.synthetic import write_shards

TOKENIZER = make_tokenizer({"text_cfg": {"context_length": 32}})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(root / "bio", layout="builder", shards=4, per_shard=24, val_fraction=0.25)
    write_shards(root / "raw", layout="raw", shards=2, per_shard=16, split="train")
    write_shards(root / "raw", layout="raw", shards=1, per_shard=16, split="val", seed=3)
    write_shards(root / "replay", layout="caption", shards=3, per_shard=16, seed=5)
    return root


def _cfg(shards, *extra):
    return load_config(None, [f"data.train=[{shards / 'bio'}]", "steps=10", "data.workers=0", "data.batch_size=8",
                              "data.shuffle_buffer=16", "data.chunk_shards=2", *extra])


def _batches(cfg, rank=0, world=1, n=6, start_micro=0, positions=None):
    loader = make_loader(cfg, rank=rank, world=world, tokenizer=TOKENIZER, image_size=32,
                         start_micro=start_micro, start_positions=positions)
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_global_batch_is_the_same_for_any_number_of_processes_and_workers(shards):
    one = _batches(_cfg(shards, "data.streams=4", "data.batch_size=8"))
    halves = [_batches(_cfg(shards, "data.streams=4", "data.batch_size=4"), rank=r, world=2) for r in (0, 1)]
    workers = _batches(_cfg(shards, "data.streams=4", "data.batch_size=8", "data.workers=2"))
    for m in range(6):
        both = torch.cat([halves[0][m].images, halves[1][m].images])
        assert torch.equal(one[m].images, both)
        assert torch.equal(one[m].texts, torch.cat([halves[0][m].texts, halves[1][m].texts]))
        assert torch.equal(one[m].images, workers[m].images)
        assert one[m].text_type == halves[1][m].text_type == workers[m].text_type


def test_resuming_from_saved_positions_continues_the_same_sequence(shards):
    cfg = _cfg(shards, "data.streams=2")
    full = _batches(cfg, n=12)
    resumed = _batches(cfg, n=6, start_micro=6, positions=full[5].positions)
    for a, b in zip(full[6:], resumed):
        assert a.micro == b.micro
        assert torch.equal(a.images, b.images) and torch.equal(a.texts, b.texts)


def test_epochs_cover_every_sample_of_the_split_once(shards):
    bio = find_shards([str(shards / "bio")], "train")
    accept = accept_bio("train", ["sci"])
    keys = []
    readers = [iter(StreamReader(bio, s, 2, seed=0, buffer=8, chunk_shards=2, resample=False, accept=accept))
               for s in range(2)]
    wanted = {s["__key__"] for u in bio.urls for s in read_samples(u) if json.loads(s["json"])["split"] == "train"}
    for r in readers:
        for _ in range(len(wanted) // 2):
            keys.append(next(r)[0]["__key__"])
    assert bio.samples == len(wanted)
    assert set(keys) <= wanted and len(set(keys)) >= len(wanted) - 4  # streams' shares differ by at most a few


def test_catalog_split_is_respected(shards):
    val = find_shards([str(shards / "bio")], "val")
    accept = accept_bio("val", ["sci"])
    seen = set()
    it = iter(StreamReader(val, 0, 1, seed=0, buffer=4, chunk_shards=4, resample=False, accept=accept))
    for _ in range(val.samples):
        sample, _ = next(it)
        seen.add(json.loads(sample["json"])["split"])
    assert seen == {"val"}


def test_raw_layout_selects_split_by_shard_name_and_renders_captions(shards):
    train = find_shards([str(shards / "raw")], "train")
    assert all("train-" in u for u in train.urls) and len(train.urls) == 2
    sample = next(read_samples(train.urls[0]))
    taxon = Taxon.from_record(json.loads(sample["json"]))
    for t in ("sci", "com", "taxon", "sci_com", "taxon_com"):
        assert bio_caption(sample, t) == render_caption(taxon, t)


def test_builder_layout_reads_caption_files(shards):
    sample = next(read_samples(find_shards([str(shards / "bio")]).urls[0]))
    assert bio_caption(sample, "taxon_com") == sample["taxon_com.txt"].decode()


def test_replay_stream_comes_with_each_batch(shards):
    cfg = _cfg(shards, f"data.replay=[{shards / 'replay'}]", "data.replay_batch_size=4", "data.streams=2")
    b = _batches(cfg, n=2)[1]
    assert b.images.shape == (8, 3, 32, 32) and b.replay_images.shape == (4, 3, 32, 32)
    assert b.replay_texts.shape == (4, 32) and set(b.positions) == {"bio", "replay"}


def test_text_type_is_a_function_of_the_step():
    types = ["sci", "com", "taxon", "sci_com", "taxon_com"]
    seq = [text_type_for_step(7, s, types) for s in range(200)]
    assert seq == [text_type_for_step(7, s, types) for s in range(200)]
    assert set(seq) == set(types)
    assert text_type_for_step(7, 3, ["taxon"]) == "taxon"


def test_accumulated_micro_batches_share_the_step_text_type(shards):
    cfg = _cfg(shards, "optim.accum=2", "data.streams=2")
    bs = _batches(cfg, n=8)
    for m in range(0, 8, 2):
        assert bs[m].text_type == bs[m + 1].text_type == text_type_for_step(0, m // 2, cfg.data.text_types)


def test_batch_sizes_must_divide_over_streams(shards):
    with pytest.raises(ConfigError, match="multiple of the streams"):
        make_loader(_cfg(shards, "data.streams=3", "data.batch_size=8"), rank=0, world=1, tokenizer=TOKENIZER,
                    image_size=32, start_micro=0, start_positions=None)


def test_position_round_trips():
    assert Position.from_list(Position(2, 3, 4).as_list()) == Position(2, 3, 4)


def test_undecodable_images_are_skipped(tmp_path, caplog):
    import io
    import tarfile

    paths = write_shards(tmp_path / "bad", layout="raw", shards=2, per_shard=8)
    with tarfile.open(paths[0], "a") as tar:
        for name, data in (("broken.jpg", b"not a jpeg"), ("broken.json", next(read_samples(paths[0]))["json"])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cfg = load_config(None, [f"data.train=[{tmp_path / 'bad'}]", "steps=1", "data.workers=0", "data.batch_size=17",
                             "data.streams=1"])
    b = _batches(cfg, n=1)[0]
    assert b.images.shape[0] == 17 and "broken" in caplog.text


def test_epochs_become_steps_from_the_catalog_or_a_count(shards):
    from taxoclip.train.data import count_samples
    from taxoclip.train.loop import DistInfo, _total_steps

    bio = find_shards([str(shards / "bio")], "train")
    assert count_samples(bio) == bio.samples > 0
    cfg = load_config(None, [f"data.train=[{shards / 'bio'}]", "steps=0", "epochs=2", "data.batch_size=8"])
    assert _total_steps(cfg, DistInfo(world=2), bio) == (-(-2 * bio.samples // 16), bio.samples)
    raw = find_shards([str(shards / "raw")], "train")
    assert raw.samples == 0 and _total_steps(cfg, DistInfo(), raw)[1] == count_samples(raw) == 32


def test_resampled_streams_are_endless_and_reproducible(shards):
    cfg = _cfg(shards, "data.resample=true", "data.streams=2", "data.chunk_shards=1")
    a, b = _batches(cfg, n=30), _batches(cfg, n=30)  # 240 samples from 72 training samples
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))
    resumed = _batches(cfg, n=5, start_micro=25, positions=a[24].positions)
    assert all(torch.equal(x.images, y.images) for x, y in zip(a[25:], resumed))


def test_builder_output_with_split_folders_and_catalog_above(tmp_path):
    """The dataset builder writes <out>/<split>/shard-NNNNN.tar and <out>/catalog.parquet."""
    write_shards(tmp_path / "built", layout="builder", shards=4, per_shard=10, val_fraction=0.25, split_folders=True)
    train = find_shards([str(tmp_path / "built")], "train")
    assert [u.split("/")[-2] for u in train.urls] == ["train"] * 3 and train.samples == 30 and not train.keep_keys
    val = find_shards([str(tmp_path / "built" / "val")], "val")  # catalog found in the folder above
    assert len(val.urls) == 1 and val.samples == 10
