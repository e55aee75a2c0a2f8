"""Classifiers end to end on a tiny model: pybioclip's API and keys, ranks, labels, bins, errors."""
import numpy as np
import pandas as pd
import pytest
import torch

from taxoclip import CustomLabelsBinningClassifier, CustomLabelsClassifier, Rank, TreeOfLifeClassifier
from taxoclip.classify import ImageEmbedder, embed_images, prediction_columns
from taxoclip.errors import InputError
from taxoclip.io import ImageLoader, find_images
from taxoclip.models import load_model


@pytest.fixture
def tol(offline_hub):
    return TreeOfLifeClassifier("bioclip-2", precision="fp32", workers=0)


def _manual_probs(clf, photo):
    """Softmax over the vocabulary computed the plain way, for one image."""
    refs, _ = find_images([photo])
    batch = next(iter(ImageLoader(refs, clf.model.preprocess, workers=0, draft=False)))
    f = clf.model.encode_image(batch.pixels)
    emb = clf.bank.embeddings(torch.float32)
    return torch.softmax(clf.model.logit_scale * f @ emb.T, dim=1)[0]


def test_species_predictions_have_pybioclip_keys_and_exact_scores(tol, photos):
    rows = tol.predict([str(p) for p in photos[:2]], rank=Rank.SPECIES, k=3)
    assert len(rows) == 6
    assert list(rows[0]) == [c for c in prediction_columns("species") if c != "error"]
    probs = _manual_probs(tol, photos[0])
    top = probs.topk(3)
    assert [r["score"] for r in rows[:3]] == pytest.approx(top.values.tolist(), rel=1e-5)
    want = [tol.bank.taxon(i) for i in top.indices.tolist()]
    assert [r["species"] for r in rows[:3]] == [t.species for t in want]
    assert all(r["file_name"] == str(photos[0]) for r in rows[:3])


def test_family_scores_sum_their_species(tol, photos):
    rows = tol.predict(str(photos[0]), rank="family", k=2)
    assert list(rows[0]) == ["file_name", "kingdom", "phylum", "class", "order", "family", "score"]
    probs = _manual_probs(tol, photos[0]).numpy()
    t = tol.bank.table
    mask = (t[["kingdom", "phylum", "class", "order", "family"]] ==
            [rows[0][c] for c in ["kingdom", "phylum", "class", "order", "family"]]).all(axis=1).to_numpy()
    assert rows[0]["score"] == pytest.approx(probs[mask].sum(), rel=1e-5)
    assert rows[0]["score"] >= rows[1]["score"]


def test_k_beyond_the_vocabulary_and_invalid_k(tol, photos):
    tol.restrict(genus=[tol.bank.table.genus[0]])
    rows = tol.predict(str(photos[0]), k=50)
    assert len(rows) == len(tol.bank) < 50
    assert sum(r["score"] for r in rows) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="positive integer"):
        tol.predict(str(photos[0]), k=0)


def test_unreadable_image_becomes_an_error_row_and_the_rest_is_predicted(tol, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    rows = tol.predict([str(photos[0]), str(bad), str(photos[1])], k=1)
    assert [r["file_name"] for r in rows] == [str(photos[0]), str(bad), str(photos[1])]
    assert "error" in rows[1] and "score" not in rows[1]


def test_pybioclip_filter_api(tol, photos, tmp_path):
    data = tol.get_label_data()
    assert list(data.columns) == ["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet",
                                  "species", "common_name"]
    fam = data.family.iloc[0]
    tol.apply_filter(tol.create_taxa_filter(Rank.FAMILY, [fam]))
    rows = tol.predict(str(photos[0]), k=3)
    assert {r["family"] for r in rows} == {fam}
    with pytest.raises(ValueError, match="unknown family"):
        tol.create_taxa_filter(Rank.FAMILY, ["Nosuchidae"])


def test_custom_labels_and_bins(tiny_model_dir, photos):
    labels = ["red fox", "grey wolf", "oak tree"]
    clf = CustomLabelsClassifier(labels, model=str(tiny_model_dir), precision="fp32", workers=0)
    rows = clf.predict(str(photos[0]))
    assert [list(r) for r in rows[:1]] == [["file_name", "classification", "score"]]
    assert sorted(r["classification"] for r in rows) == sorted(labels)
    assert sum(r["score"] for r in rows) == pytest.approx(1.0, abs=1e-5)
    per_label = {r["classification"]: r["score"] for r in rows}
    assert len(clf.predict(str(photos[0]), k=2)) == 2
    binned = CustomLabelsBinningClassifier({"red fox": "canid", "grey wolf": "canid", "oak tree": "plant"},
                                           model=str(tiny_model_dir), precision="fp32", workers=0)
    out = {r["classification"]: r["score"] for r in binned.predict(str(photos[0]))}
    assert out["canid"] == pytest.approx(per_label["red fox"] + per_label["grey wolf"], rel=1e-5)
    with pytest.raises(InputError, match="without a bin"):
        CustomLabelsBinningClassifier({"a": "x", "b": ""}, model=str(tiny_model_dir))


def test_taxa_table_classifier(tiny_model_dir, photos, tmp_path):
    csv = tmp_path / "taxa.csv"
    pd.DataFrame({"kingdom": ["Animalia", "Animalia", "Plantae"], "family": ["Canidae", "Canidae", "Fagaceae"],
                  "genus": ["Vulpes", "Canis", "Quercus"], "species": ["Vulpes vulpes", "Canis lupus", "Quercus robur"],
                  "common_name": ["red fox", "wolf", "oak"]}).to_csv(csv, index=False)
    clf = TreeOfLifeClassifier(str(tiny_model_dir), taxa=csv, precision="fp32", workers=0)
    fam = clf.predict(str(photos[0]), rank="family", k=5)
    assert {r["family"] for r in fam} == {"Canidae", "Fagaceae"}
    assert sum(r["score"] for r in fam) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_are_the_model_features(tiny_model_dir, photos):
    names, vecs = embed_images([str(p) for p in photos[:3]], str(tiny_model_dir), precision="fp32", workers=0)
    assert names == [str(p) for p in photos[:3]] and vecs.shape == (3, 32)
    m = load_model(str(tiny_model_dir), precision="fp32")
    refs, _ = find_images(photos[:1])
    pix = next(iter(ImageLoader(refs, m.preprocess, workers=0, draft=False))).pixels
    assert np.allclose(vecs[0], m.encode_image(pix, normalize=False)[0].numpy(), atol=1e-6)
    [(name, vec, err)] = ImageEmbedder(m).embed_iter([str(photos[0])], normalize=True)
    assert name == str(photos[0]) and err is None
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)


def test_in_memory_images(tiny_model_dir, photos):
    from PIL import Image

    clf = CustomLabelsClassifier(["a", "b"], model=str(tiny_model_dir), precision="fp32")
    rows = clf.predict([Image.open(photos[0]), Image.open(photos[1])])
    assert [r["file_name"] for r in rows] == ["0", "0", "1", "1"]
