"""`taxoclip data build` end to end: shards read back as the catalog, errors, duplicates, resume."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from data_helpers import bio_mini_subset, jpeg, photo, write_folder_with_table, write_shard_set
from taxoclip.data.build import BuildConfig, BuildOptions, build
from taxoclip.data.catalog import taxon_of_row
from taxoclip.data.imaging import ImageSpec
from taxoclip.taxonomy import CAPTION_FILES, captions

SMALL = ImageSpec(size=32, min_side=16)


def small_build(inputs, out, **kw):
    opts = kw.pop("options", BuildOptions(workers=0, progress=False))
    return build([str(i) for i in inputs], out, config=BuildConfig(image=kw.pop("image", SMALL), **kw), options=opts)


def read_shards(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.rglob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_bio_mini_build_reads_back_with_webdataset_exactly_as_the_catalog(tmp_path, bio_mini):
    wds = pytest.importorskip("webdataset")
    src = bio_mini_subset(bio_mini, tmp_path / "src", per_set=10, sets=("apple", "tinyimagenet", "seedlings"))
    out = tmp_path / "out"
    stats = build([str(p) for p in sorted(src.iterdir())], out, config=BuildConfig(image=ImageSpec(min_side=32)),
                  options=BuildOptions(workers=1, progress=False))
    cat = pd.read_parquet(out / "catalog.parquet")
    assert len(cat) == stats["images"] == stats["build"]["counts"]["written"] == 30
    shards = sorted(str(p) for p in out.rglob("shard-*.tar"))
    got = {}
    for s in wds.WebDataset(shards, shardshuffle=False):
        got[s["__key__"]] = s
    assert set(got) == set(cat["uuid"])
    for row in cat.to_dict("records"):
        sample = got[row["uuid"]]
        want = captions(taxon_of_row(row))
        for name, text in want.items():
            assert sample[name.lower()].decode() == text  # webdataset lower-cases extensions
        meta = json.loads(sample["json"])
        assert (meta["kingdom"], meta["genus"], meta["split"]) == (row["kingdom"], row["genus"], row["split"])
        assert Path(sample["__url__"]).relative_to(out).as_posix() == row["shard"]
        img = Image.open(__import__("io").BytesIO(sample["jpg"]))
        assert img.format == "JPEG" and img.size == (224, 224)  # squashed like the reference shards
    # bio-mini's own labels survive: apple health traits, the source licence note
    apple = cat[cat.data_source == "apple"].iloc[0]
    assert "health" in json.loads(apple["traits"]) and "PlantVillage" in apple["license"]


def test_every_sample_has_the_ten_caption_files_and_a_stable_uuid(tmp_path):
    write_shard_set(tmp_path / "src", 12)
    small_build([tmp_path / "src"], tmp_path / "a")
    small_build([tmp_path / "src"], tmp_path / "b", options=BuildOptions(workers=2, progress=False))
    a, b = read_shards(tmp_path / "a"), read_shards(tmp_path / "b")
    assert a == b  # same bytes whatever the number of workers
    for files in a.values():
        assert set(files) == {"jpg", "json", *CAPTION_FILES}
    assert sorted(pd.read_parquet(tmp_path / "a" / "catalog.parquet")["uuid"]) == sorted(a)


def test_shards_hold_shard_size_samples_and_follow_the_name_pattern(tmp_path):
    write_shard_set(tmp_path / "src", 25)
    small_build([tmp_path / "src"], tmp_path / "out", shard_size=10, splits=__import__(
        "taxoclip.data.splits", fromlist=["SplitRule"]).SplitRule.parse("train=1"))
    names = sorted(p.name for p in (tmp_path / "out" / "train").iterdir())
    assert names == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    counts = [len(tarfile.open(tmp_path / "out" / "train" / n).getnames()) // 12 for n in names]
    assert counts == [10, 10, 5]


def test_broken_images_go_to_the_error_report_and_the_rest_is_built(tmp_path):
    folder = write_folder_with_table(tmp_path / "photos", 6)
    good = (folder / "img000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    Image.new("RGB", (1, 1), "red").save(folder / "tiny.jpg")
    with open(folder / "labels.csv", "a") as f:
        for name in ("truncated.jpg", "empty.jpg", "notes.jpg", "tiny.jpg", "missing.jpg"):
            f.write(f"{name},Animalia,Chordata,Mammalia,Carnivora,Felidae,Puma,Puma concolor,cougar\n")
    stats = small_build([folder], tmp_path / "out")
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    reasons = {Path(o).name: r for o, r in zip(errors.origin, errors.reason)}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "notes.jpg", "tiny.jpg", "missing.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "too small" in reasons["tiny.jpg"] and "1x1" in reasons["tiny.jpg"]
    assert "not found" in reasons["missing.jpg"]
    assert stats["build"]["counts"]["written"] == 6
    assert stats["build"]["counts"]["errors"] == 5


def test_exact_and_near_duplicates_are_removed_and_reported(tmp_path):
    folder = write_folder_with_table(tmp_path / "photos", 4)
    original = photo(1000)  # img000.jpg
    (folder / "copy.jpg").write_bytes((folder / "img000.jpg").read_bytes())
    (folder / "reencoded.jpg").write_bytes(jpeg(original.resize((128, 96)), quality=80))  # 2x, re-encoded
    with open(folder / "labels.csv", "a") as f:
        for name in ("copy.jpg", "reencoded.jpg"):
            f.write(f"{name},Animalia,Chordata,Mammalia,Carnivora,Felidae,Puma,Puma concolor,cougar\n")
    small_build([folder], tmp_path / "out")
    removed = pd.read_csv(tmp_path / "out" / "removed.csv")
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    first = cat.loc[cat.origin.str.endswith("img000.jpg"), "uuid"].item()
    by_name = {Path(o).name: (rule, m) for o, rule, m in zip(removed.origin, removed.rule, removed.matched)}
    assert by_name == {"copy.jpg": ("exact", first), "reencoded.jpg": ("pdq", first)}
    assert len(cat) == 4


def test_photos_of_one_occurrence_share_a_split(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rows = ["filepath,source_id,kingdom,genus,species"]
    for i in range(40):
        (folder / f"{i}.jpg").write_bytes(jpeg(photo(i)))
        rows.append(f"{i}.jpg,occ{i // 4},Animalia,Puma,Puma concolor")
    (folder / "t.csv").write_text("\n".join(rows) + "\n")
    from taxoclip.data.splits import SplitRule

    small_build([folder], tmp_path / "out", splits=SplitRule.parse("train=0.5,val=0.5"), dedup_threshold=0)
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    assert len(cat) == 40
    assert (cat.groupby("source_id")["split"].nunique() == 1).all()
    assert set(cat.split) == {"train", "val"}


def test_a_finished_build_is_not_redone_and_other_options_are_refused(tmp_path):
    write_shard_set(tmp_path / "src", 6)
    out = tmp_path / "out"
    small_build([tmp_path / "src"], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    small_build([tmp_path / "src"], out)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    from taxoclip.errors import InputError

    with pytest.raises(InputError, match="different"):
        small_build([tmp_path / "src"], out, shard_size=2)
    small_build([tmp_path / "src"], out, shard_size=2, options=BuildOptions(workers=0, progress=False, overwrite=True))
    assert len(list(out.rglob("shard-*.tar"))) >= 3


def test_an_occupied_output_folder_is_refused(tmp_path):
    write_shard_set(tmp_path / "src", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.docx").write_text("precious")
    from taxoclip.errors import InputError

    with pytest.raises(InputError, match="not empty"):
        small_build([tmp_path / "src"], tmp_path / "out")


def test_url_records_are_fetched_and_kept_in_input_order(tmp_path, monkeypatch):
    """The fetcher answers in completion order; the build must not depend on it."""
    import taxoclip.data.fetch as fetch

    folder = tmp_path / "photos"
    folder.mkdir()
    blobs = {f"http://x.test/{i}.jpg": jpeg(photo(i)) for i in range(20)}
    rows = ["url,source_id,kingdom,genus,species"] + [f"{u},occ{i},Animalia,Puma,Puma concolor"
                                                      for i, u in enumerate(blobs)]
    rows.append("http://x.test/404.jpg,occ404,Animalia,Puma,Puma concolor")
    (folder / "urls.csv").write_text("\n".join(rows) + "\n")
    calls = []

    def fake_fetch_all(records, journal_path, **kw):
        calls.append(kw)
        records = list(records)
        random.Random(1).shuffle(records)  # completion order is anything
        for r in records:
            data = blobs.get(r.url)
            yield (r, data, None) if data else (r, None, "HTTP 404")

    monkeypatch.setattr(fetch, "fetch_all", fake_fetch_all)
    small_build([folder / "urls.csv"], tmp_path / "out", dedup_threshold=0,
                options=BuildOptions(workers=0, progress=False, fetch={"concurrency": 3}))
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    assert list(cat.origin) == list(blobs)  # input order, whatever the completion order
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert list(errors.origin) == ["http://x.test/404.jpg"] and "404" in errors.reason[0]
    assert calls == [{"concurrency": 3}]


# ----- resume after SIGKILL ---------------------------------------------------------------------
BUILD_CMD = [sys.executable, "-m", "taxoclip", "data", "build", "--min-side", "16", "--size", "32",
             "--shard-size", "15", "--checkpoint-every", "10", "--workers", "1", "--splits", "train=0.8,val=0.2",
             "--no-progress"]


def run_build(src: Path, out: Path, kill_after_parts: int | None = None) -> bool:
    """Run the CLI build; with `kill_after_parts`, SIGKILL it once that many checkpoints exist.

    Returns whether the process was still running when it was killed.
    """
    env = dict(os.environ, PYTHONHASHSEED=str(random.randint(0, 10_000)))
    proc = subprocess.Popen([*BUILD_CMD, str(src), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after_parts is None:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        return False
    parts = out / ".work" / "parts"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*.json"))) >= kill_after_parts:
            break
        time.sleep(0.005)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def snapshot(out: Path) -> dict[str, bytes]:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert not any(name.startswith(".work") for name in files)
    return files


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_equals_an_uninterrupted_build(tmp_path):
    src = tmp_path / "src"
    write_shard_set(src, 150)
    run_build(src, tmp_path / "ref")
    ref = snapshot(tmp_path / "ref")
    assert sum(name.endswith(".tar") for name in ref) >= 8
    killed_while_running = 0
    for i, parts in enumerate((1, 4, 9)):
        out = tmp_path / f"out{i}"
        killed_while_running += run_build(src, out, kill_after_parts=parts)
        if i == 2:  # kill the resumed run too
            killed_while_running += run_build(src, out, kill_after_parts=parts + 3)
        run_build(src, out)
        got = snapshot(out)
        assert got.keys() == ref.keys()
        for name in ref:
            assert got[name] == ref[name], f"{name} differs after a kill at checkpoint {parts}"
    assert killed_while_running >= 3  # the kills really interrupted running builds


def test_a_build_stopped_by_an_error_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Stopping on an exception (Ctrl-C, a full disk) between checkpoints, then re-running,
    gives the uninterrupted result: the duplicate index is rewound to the last checkpoint."""
    from taxoclip.data import build as build_module

    folder = write_folder_with_table(tmp_path / "photos", 30)
    with open(folder / "labels.csv", "a") as f:  # exact duplicates of earlier photos, late in the input
        for i in (2, 25):
            (folder / f"copy{i}.jpg").write_bytes((folder / f"img{i:03d}.jpg").read_bytes())
            f.write(f"copy{i}.jpg,Animalia,Chordata,Mammalia,Carnivora,Felidae,Puma,Puma concolor,cougar\n")
    options = BuildOptions(workers=0, progress=False, checkpoint_every=10)
    small_build([folder], tmp_path / "ref", options=options)
    write = build_module._Builder._write
    calls = []

    def failing_write(self, *args):
        calls.append(1)
        if len(calls) == 27:  # between the checkpoints after records 20 and 30
            raise KeyboardInterrupt
        return write(self, *args)

    monkeypatch.setattr(build_module._Builder, "_write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        small_build([folder], tmp_path / "out", options=options)
    monkeypatch.setattr(build_module._Builder, "_write", write)
    small_build([folder], tmp_path / "out", options=options)
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "ref")
    removed = pd.read_csv(tmp_path / "out" / "removed.csv")
    assert sorted(Path(o).name for o in removed.origin) == ["copy2.jpg", "copy25.jpg"]


def test_names_resolved_by_a_backbone_and_unresolved_ones_reported(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "t.csv").write_text("filepath,scientific_name\n0.jpg,Puma concolor\n1.jpg,Nonexistia imaginaria\n"
                                  "2.jpg,Felis catus\n")
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg(photo(i)))
    taxa = tmp_path / "taxa.csv"
    taxa.write_text("kingdom,phylum,class,order,family,genus,species\n"
                    "Animalia,Chordata,Mammalia,Carnivora,Felidae,Puma,Puma concolor\n")
    stats = small_build([folder], tmp_path / "out", backbones=(str(taxa),))
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    assert list(cat.resolution) == ["given+backbone:taxa"] and cat.family.item() == "Felidae"
    unresolved = pd.read_csv(tmp_path / "out" / "unresolved.csv")
    assert sorted(unresolved.scientific_name) == ["Felis catus", "Nonexistia imaginaria"]
    assert all("not found in backbone taxa" in r for r in unresolved.reason)
    assert stats["build"]["counts"]["unresolved"] == 2


def test_split_from_source_keeps_a_given_split_but_never_a_path(tmp_path):
    import tarfile as tf

    from data_helpers import tar_add

    (tmp_path / "src").mkdir()
    with tf.open(tmp_path / "src" / "a.tar", "w") as tar:
        for i, split in enumerate(["test", "test", "../../evil", "val"]):
            tar_add(tar, f"k{i}.jpg", jpeg(photo(i)))
            tar_add(tar, f"k{i}.json", json.dumps({"kingdom": "Animalia", "genus": "Puma", "split": split}).encode())
    small_build([tmp_path / "src"], tmp_path / "out", split_from_source=True)
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    assert list(cat.split[[0, 1, 3]]) == ["test", "test", "val"]
    assert cat.split[2] in ("train", "val")  # hashed instead
    assert not (tmp_path / "evil").exists()


def test_fast_member_headers_are_the_ones_tarfile_writes():
    from taxoclip.data.shardwriter import MTIME, member_header

    for name, size in [("a.jpg", 0), ("6f1c3c2e-7a9b-5d4e-9c1a-2b3d4e5f6a7b.taxonTag_com.txt", 511),
                       ("k.json", 512), ("k.jpg", 10**9 + 7)]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, MTIME, 0o444
        info.uname = info.gname = "bigdata"
        assert member_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def test_reorder_buffer_spills_images_to_disk_past_its_limit():
    from taxoclip.data.build import _ReorderBuffer
    from taxoclip.data.records import Record
    from taxoclip.taxonomy import Taxon

    buf = _ReorderBuffer(limit=100)
    blobs = {i: bytes([i]) * 60 for i in range(5)}
    for i in (3, 1, 4, 0, 2):
        buf.put(i, Record(str(i), Taxon(), "t", str(i), image=blobs[i]), None)
    assert buf.in_memory <= 100 and buf.spill is not None
    assert [buf.pop(i)[1].image for i in range(5)] == [blobs[i] for i in range(5)]
    assert buf.spill is None and buf.in_memory == 0
