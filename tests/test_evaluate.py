"""Few-shot evaluation (SimpleShot with CL2N) on hand-computed cases, datasets in the reference
layout, the embedding cache, and `taxoclip eval few-shot` end to end with a tiny model."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxoclip.cli import main as cli
from taxoclip.errors import InputError
from taxoclip.evaluate import few_shot, image_embeddings, load_datasets, simpleshot_accuracy
from taxoclip.evaluate.fewshot import knn_accuracy, linear_probe_accuracy, split_fold


def test_separable_classes_are_all_right():
    feats = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=float)
    classes = np.array(["a", "a", "b", "b"])
    assert all(simpleshot_accuracy(feats, classes, 1, f) == 1.0 for f in range(5))


def test_cl2n_subtracts_the_support_mean_before_comparing():
    """By hand: with one shot, supports a = (3, 1) or (2.2, 2.5) and b = (1, 1). Either way the
    other photo of a is nearer b's direction than a's (normalised without the shift it would be
    called b), but after subtracting the support mean and normalising it lies on a's side."""
    feats = np.array([[3, 1], [2.2, 2.5], [1, 1]], dtype=float)
    classes = np.array(["a", "a", "b"])
    raw = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert np.linalg.norm(raw[0] - raw[2]) < np.linalg.norm(raw[0] - raw[1])  # no shift: b is nearer
    assert all(simpleshot_accuracy(feats, classes, 1, f) == 1.0 for f in range(5))


def test_knn_and_linear_probe_on_the_same_folds():
    feats = np.array([[1, 0.1], [0.9, 0], [1, -0.1], [0, 1], [0.1, 0.9], [-0.1, 1]], dtype=float)
    classes = np.array(["a", "a", "a", "b", "b", "b"])
    assert all(knn_accuracy(feats, classes, 1, f) == 1.0 for f in range(3))
    assert all(linear_probe_accuracy(feats, classes, 2, f) == 1.0 for f in range(3))
    # 3 neighbours out of 2 + 2 supports: a 2-2 vote is a tie, won by the class of the nearest photo
    far = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0.8, 0.2], [0.2, 0.8]], dtype=float)
    cls = np.array(["a", "a", "b", "b", "a", "b"])
    assert knn_accuracy(far, cls, 2, 0, neighbors=4) == 1.0
    assert np.isnan(knn_accuracy(feats[:2], classes[:2], 5, 0))  # no queries


def test_a_tie_goes_to_the_class_that_sorts_first():
    # every photo is the same vector: after subtracting the support mean all are zero, all
    # centroids are equally near, so both queries are called "a": one right, one wrong
    feats = np.ones((4, 3))
    classes = np.array(["b", "a", "b", "a"])
    assert simpleshot_accuracy(feats, classes, 1, 0) == 0.5


def test_classes_with_too_few_photos_give_support_but_no_queries():
    feats = np.array([[1, 0]] * 6 + [[0, 1]] * 6 + [[-1, 0]] * 2, dtype=float)
    classes = np.array(["a"] * 6 + ["b"] * 6 + ["c"] * 2)
    sup, qry = split_fold(classes, 5, 0)
    assert len(sup) == 12 and len(qry) == 2 and set(classes[qry]) == {"a", "b"}
    assert simpleshot_accuracy(feats, classes, 5, 0) == 1.0
    # a query of "a" placed at c's photos is called "c": c's centroid exists
    feats2 = feats.copy()
    a_query = qry[classes[qry] == "a"][0]
    feats2[a_query] = [-1, 0]
    assert simpleshot_accuracy(feats2, classes, 5, 0) == 0.5


def test_a_species_with_one_photo_and_fold_seeding():
    classes = np.array(["a"] * 10 + ["b"] * 10 + ["lonely"])
    sup0, qry0 = split_fold(classes, 1, 0)
    assert "lonely" in classes[sup0] and "lonely" not in classes[qry0]
    assert np.array_equal(split_fold(classes, 1, 0)[0], sup0)  # fold f is always drawn the same way
    assert not np.array_equal(split_fold(classes, 1, 1)[0], sup0)
    res = few_shot(np.random.default_rng(0).normal(size=(21, 4)), classes, shots=(1, 5), folds=3)
    assert set(res) == {1, 5} and len(res[1]["folds"]) == 3 and 0 <= res[5]["mean"] <= 1


def _folder(tmp_path, classes, extra=None):
    root = tmp_path / "set"
    (root / "img").mkdir(parents=True)
    rows = []
    for i, c in enumerate(classes):
        color = (200, 30, 30) if c == "red fox" else (30, 30, 200)
        Image.new("RGB", (40, 30), tuple(v + i for v in color)).save(root / "img" / f"{i}.jpg")
        rows.append({"filepath": f"img/{i}.jpg", "class": c, "genus": c.split()[0].title(), **(extra or {})})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_reference_layout_and_clear_errors(tmp_path):
    root = _folder(tmp_path, ["red fox"] * 3 + ["blue jay"] * 3, extra={"sex": "f"})
    ds = load_datasets([root])[0]
    assert len(ds) == 6 and ds.labels["target"].tolist()[:3] == ["red fox"] * 3
    assert ds.column("sex").tolist() == ["f"] * 6 and ds.column("genus").iloc[0] == "Red"
    with pytest.raises(InputError, match="no column 'age'.*sex"):
        ds.column("age")
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"path": ["x.jpg"], "class": ["a"]}).to_csv(bad / "metadata.csv", index=False)
    with pytest.raises(InputError, match="no filepath column"):
        load_datasets([bad])
    with pytest.raises(InputError, match="no metadata.csv"):
        load_datasets([tmp_path / "set" / "img"])


def test_embeddings_are_cached_per_model_and_set(tmp_path, tiny_model_dir, monkeypatch):
    from taxoclip import classify
    from taxoclip.models import load_model

    ds = load_datasets([_folder(tmp_path, ["red fox", "blue jay"] * 2)])[0]
    model = load_model(str(tiny_model_dir), precision="fp32")
    first = image_embeddings(model, ds)
    assert first.shape == (4, model.embed_dim) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)

    def no_model(*a, **k):
        raise AssertionError("embedded again")
    monkeypatch.setattr(classify.ImageEmbedder, "embed_iter", no_model)
    assert np.array_equal(image_embeddings(model, ds), first)
    # the same files under another spelling of their path are the same photos
    monkeypatch.chdir(tmp_path)
    assert np.array_equal(image_embeddings(model, load_datasets(["set"])[0]), first)


def test_eval_few_shot_writes_the_table_with_a_random_floor(tmp_path, tiny_model_dir, capsys):
    root = _folder(tmp_path, ["red fox"] * 4 + ["blue jay"] * 4)
    out = tmp_path / "results"
    assert cli(["eval", "few-shot", str(root), "--model", str(tiny_model_dir), "--random-init", "--shots", "1,2",
                "--folds", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out / "few-shot.csv")
    assert list(table.columns) == ["model", "method", "shots", "set", "mean"]
    assert len(table) == 4 and table["model"].str.contains("random init").sum() == 2
    assert table["mean"].between(0, 100).all()
    assert "| model | method | shots | set | mean |" in (out / "few-shot.md").read_text()
    assert cli(["eval", "few-shot", str(root), "--model", str(tiny_model_dir), "--method", "knn,linear", "--shots", "1",
                "--folds", "2", "--out", str(out)]) == 0
    assert set(pd.read_csv(out / "few-shot.csv")["method"]) == {"knn", "linear"}
    one = _folder(tmp_path / "one", ["red fox"] * 3)
    assert cli(["eval", "few-shot", str(one), "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "no dataset with two or more classes" in capsys.readouterr().err
    assert cli(["eval", "few-shot", str(root), "--model", str(tiny_model_dir), "--method", "bogus",
                "--out", str(out)]) == 2
    assert "expected some of simpleshot, knn, linear" in capsys.readouterr().err


def test_zero_shot_scores_every_rank_against_hand_made_banks(tmp_path, tiny_model_dir):
    """Rows that are exactly the photos' embeddings: each photo's own taxon wins, so every rank is
    right; swap two species of one genus and species top-1 falls to 0 while genus stays right."""
    from taxoclip.evaluate import zero_shot
    from taxoclip.models import load_model
    from taxoclip.textbank import TextBank

    root = tmp_path / "zs"
    (root / "img").mkdir(parents=True)
    rows = []
    for i, (g, sp) in enumerate([("Vulpes", "vulpes"), ("Vulpes", "lagopus")]):
        Image.new("RGB", (32, 32), (40 * i, 90, 200 - 40 * i)).save(root / "img" / f"{i}.jpg")
        rows.append({"filepath": f"img/{i}.jpg", "class": f"{g} {sp}", "kingdom": "Animalia", "phylum": "Chordata",
                     "class_": "", "order": "Carnivora", "family": "Canidae", "genus": g, "species": f"{g} {sp}"})
    df = pd.DataFrame(rows)
    df.to_csv(root / "metadata.csv", index=False)
    ds = load_datasets([root])[0]
    model = load_model(str(tiny_model_dir), precision="fp32")
    feats = np.eye(2, model.embed_dim, dtype=np.float32)
    table = pd.DataFrame({"kingdom": ["Animalia"] * 2, "phylum": ["Chordata"] * 2, "class": [""] * 2,
                          "order": ["Carnivora"] * 2, "family": ["Canidae"] * 2, "genus": ["Vulpes"] * 2,
                          "species_epithet": ["vulpes", "lagopus"], "common_name": ["", ""]})
    right = zero_shot(model, ds, feats, TextBank.from_arrays(feats, table))
    assert right["top1"]["species"] == 1.0 and right["top1"]["genus"] == 1.0 and right["top5"] == 1.0
    swapped = zero_shot(model, ds, feats, TextBank.from_arrays(feats, table.iloc[::-1].reset_index(drop=True)))
    assert swapped["top1"]["species"] == 0.0 and swapped["top1"]["genus"] == 1.0 and swapped["top5"] == 1.0


def test_eval_zero_shot_cli_writes_tables(tmp_path, tiny_model_dir):
    root = _folder(tmp_path, ["red fox"] * 2 + ["blue jay"] * 2)
    out = tmp_path / "zs-out"
    assert cli(["eval", "zero-shot", str(root), "--model", str(tiny_model_dir), "--random-init", "--text", "asis",
                "--templates", "photo", "--out", str(out)]) == 0
    table = pd.read_csv(out / "zero-shot.csv")
    assert list(table.columns) == ["model", "set", "mean"] and len(table) == 2
    ranks = pd.read_csv(out / "zero-shot-ranks.csv")
    assert set(ranks["classes"]) == {2} and ranks["top1_species"].between(0, 1).all()
