"""`taxoclip data build | stats | verify` as a user runs them."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from data_helpers import bio_mini_subset, write_folder_with_table, write_shard_set
from taxoclip.cli import main


@pytest.fixture
def built(tmp_path):
    write_shard_set(tmp_path / "src", 30)
    write_folder_with_table(tmp_path / "photos", 6)
    out = tmp_path / "out"
    rc = main(["data", "build", str(tmp_path / "src"), str(tmp_path / "photos"), "--out", str(out),
               "--min-side", "16", "--size", "32", "--shard-size", "8", "--workers", "0", "--no-progress"])
    assert rc == 0
    return out


def test_stats_counts_per_split_kingdom_and_rank(built, capsys):
    assert main(["data", "stats", str(built), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 36 and sum(stats["splits"].values()) == 36
    assert stats["kingdoms"] == {"Animalia": 13, "Fungi": 10, "Plantae": 13}
    assert stats["ranks"]["kingdom"] == {"taxa": 3, "images": 36}
    assert stats["ranks"]["species"]["taxa"] == 2  # the fungus is known to order only
    assert stats["taxa"] == 3 and sum(stats["images_per_taxon"].values()) == 3
    assert stats["build"]["counts"]["records"] == 36
    assert main(["data", "stats", str(built)]) == 0
    text = capsys.readouterr().out
    assert "images: 36" in text and "kingdom" in text


def test_verify_passes_on_a_build_and_catches_tampering(built, capsys):
    assert main(["data", "verify", str(built)]) == 0
    assert "OK" in capsys.readouterr().out
    # Rewrite one shard with a wrong caption: verify names the sample and the file.
    shard = sorted(built.rglob("shard-*.tar"))[0]
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m, tar.extractfile(m).read()))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name.endswith(".sci.txt") and "tampered" not in locals():
                data, tampered = b"a photo of Homo sapiens.", m.name
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    assert main(["data", "verify", str(built)]) == 1
    out = capsys.readouterr().out
    assert tampered.removesuffix(".sci.txt") in out and "sci.txt" in out


def test_verify_catches_a_missing_shard(built, capsys):
    sorted(built.rglob("shard-*.tar"))[-1].unlink()
    assert main(["data", "verify", str(built), "--no-decode"]) == 1
    assert "missing" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path, capsys):
    rc = main(["data", "build", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "nothing: no such file" in err and err.count("\n") == 1
    (tmp_path / "t.csv").write_text("filepath,color\na.jpg,red\n")
    rc = main(["data", "build", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "t.csv: no taxonomy columns" in err
    assert main(["data", "verify", str(tmp_path)]) == 2


def test_exclude_removes_copies_of_evaluation_photos(tmp_path, bio_mini):
    """A training set that contains altered copies of evaluation photos loses exactly those."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import random

    from leakage_eval import add, plant
    from PIL import Image

    src = bio_mini_subset(bio_mini, tmp_path / "train", per_set=15, sets=("butterflies", "flowers", "seedlings"))
    evals = bio_mini_subset(bio_mini, tmp_path / "eval", per_set=8, sets=("butterflies", "flowers", "seedlings"),
                            split="val")
    rng = random.Random(3)
    planted = []
    with tarfile.open(src / "planted.tar", "w") as out:
        for shard in sorted(evals.rglob("*.tar")):
            with tarfile.open(shard) as t:
                for m in t:
                    if m.name.endswith(".jpg"):
                        key = "copy-" + m.name[:-4]
                        img = Image.open(io.BytesIO(t.extractfile(m).read()))
                        add(out, key + ".jpg", plant(img, "all", rng))
                        add(out, key + ".json", b'{"kingdom": "Plantae", "genus": "Rosa"}')
                        planted.append(key)
    rc = main(["data", "build", str(src), "--out", str(tmp_path / "out"), "--exclude", str(evals),
               "--min-side", "16", "--size", "32", "--workers", "1", "--no-progress"])
    assert rc == 0
    import pandas as pd

    removed = pd.read_csv(tmp_path / "out" / "removed.csv")
    leaks = removed[removed.reason == "evaluation image"]
    assert sorted(leaks.source_id) == sorted(planted)
    cat = pd.read_parquet(tmp_path / "out" / "catalog.parquet")
    assert len(cat) + len(removed) == 45 + len(planted)
