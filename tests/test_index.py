"""Nearest-photo search: the most similar indexed photos, and a novelty flag learnt from the index."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxoclip.cli import main
from taxoclip.errors import InputError
from taxoclip.evaluate.search import PhotoIndex


def test_novelty_threshold_is_the_collections_own_quantile():
    # four tight pairs on the unit circle: each photo's nearest neighbour is at cos 0.98
    angles = np.array([0, 0.2, 1.6, 1.8, 3.2, 3.4, 4.7, 4.9])
    v = np.stack([np.cos(angles), np.sin(angles)], 1)
    index = PhotoIndex.build([f"p{i}" for i in range(8)], v, "m", quantile=0.05)
    assert index.threshold == pytest.approx(np.cos(0.2), abs=1e-5)
    sims, pos, novel = index.search(np.array([[np.cos(0.1), np.sin(0.1)], [np.cos(0.9), np.sin(0.9)]]), k=2)
    assert list(pos[0]) in ([0, 1], [1, 0]) and sims[0, 0] == pytest.approx(np.cos(0.1), abs=1e-5)
    assert list(novel) == [False, True]  # halfway between two pairs: less similar than any pair is


def test_index_build_and_search_from_the_command_line(tiny_model_dir, tmp_path):
    folder = tmp_path / "collection"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        px = np.clip(np.array([200, 60, 20]) + rng.normal(0, 10, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(folder / f"{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    index = tmp_path / "index"
    assert main(["index", "build", str(folder), "-o", str(index), "--model", str(tiny_model_dir)]) == 1  # one unreadable
    assert len(PhotoIndex.load(index).names) == 6
    out = tmp_path / "hits.csv"
    assert main(["index", "search", str(index), str(folder / "0.jpg"), "--k", "3", "-o", str(out)]) == 0
    hits = pd.read_csv(out)
    assert list(hits["rank"]) == [1, 2, 3]
    assert hits["match"].iloc[0].endswith("0.jpg") and hits["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert not hits["novel"].iloc[0]


def test_loading_something_else_is_one_line(tmp_path):
    with pytest.raises(InputError, match="not a photo index"):
        PhotoIndex.load(tmp_path)


def test_a_labelled_collection_names_each_matchs_class(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(0)
    for name, colour in (("red fox", (200, 60, 20)), ("blue jay", (20, 60, 200))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            px = np.clip(np.array(colour) + rng.normal(0, 10, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(tmp_path / "photos" / name / f"{i}.jpg")
    index = tmp_path / "index"
    assert main(["index", "build", str(tmp_path / "photos"), "--labelled", "-o", str(index), "--model",
                 str(tiny_model_dir)]) == 0
    assert sorted(PhotoIndex.load(index).labels) == ["blue jay"] * 3 + ["red fox"] * 3
    out = tmp_path / "hits.csv"
    assert main(["index", "search", str(index), str(tmp_path / "photos" / "blue jay" / "1.jpg"), "--k", "1",
                 "-o", str(out)]) == 0
    hit = pd.read_csv(out).iloc[0]
    assert hit["label"] == "blue jay" and hit["match"].endswith("blue jay/1.jpg")


def test_a_folder_of_bio_mini_sets_is_indexed_with_its_taxa(bio_mini, tiny_model_dir, tmp_path):
    from data_helpers import bio_mini_subset

    sets = bio_mini_subset(bio_mini, tmp_path / "sets", per_set=4, sets=("butterflies", "fish"))
    index = tmp_path / "index"
    assert main(["index", "build", str(sets), "--labelled", "--split", "train", "-o", str(index), "--model",
                 str(tiny_model_dir)]) == 0
    built = PhotoIndex.load(index)
    assert len(built.names) == 8 and all(n.endswith(".jpg") for n in built.names)
    assert all(label[:1].isupper() for label in built.labels)  # the deepest labelled taxon, not the source's label
