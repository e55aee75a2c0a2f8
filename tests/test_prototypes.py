"""Add my species from a few photos: prototypes become a vocabulary that predict uses."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxoclip.cli import main


def _photos(folder, colour, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        px = np.clip(np.array(colour) + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(folder / f"{i}.jpg")


def test_class_folders_become_a_vocabulary_predict_uses(tiny_model_dir, tmp_path, capsys):
    train, query = tmp_path / "train", tmp_path / "query"
    _photos(train / "Vulpes vulpes", (200, 60, 20), 4, 0)   # foxes are orange here
    _photos(train / "my blue bird", (20, 60, 200), 4, 1)
    _photos(query, (200, 60, 20), 3, 2)
    protos = tmp_path / "protos"
    assert main(["prototypes", "build", str(train), "-o", str(protos), "--model", str(tiny_model_dir)]) == 0
    assert "2 classes from 8 photos" in capsys.readouterr().err
    out = tmp_path / "p.csv"
    assert main(["predict", str(query), "--model", str(tiny_model_dir), "--vocabulary", str(protos), "--k", "2",
                 "-o", str(out)]) == 0
    rows = pd.read_csv(out, keep_default_na=False)
    top = rows.groupby("file_name").first()
    assert len(top) == 3
    # a class named by a binomial keeps genus and epithet; a free name is a common name
    assert set(rows["species"]) | set(rows["common_name"]) >= {"Vulpes vulpes", "my blue bird"}
    assert (top["species"] == "Vulpes vulpes").all()


def test_too_few_photos_is_one_line(tiny_model_dir, tmp_path, capsys):
    _photos(tmp_path / "train" / "a", (10, 10, 10), 1, 0)
    _photos(tmp_path / "train" / "b", (250, 250, 250), 3, 1)
    code = main(["prototypes", "build", str(tmp_path / "train"), "-o", str(tmp_path / "p"), "--model",
                 str(tiny_model_dir), "--min-photos", "2"])
    assert code == 2
    assert "fewer than 2 photos: a" in capsys.readouterr().err


def _taxa(*species):
    return pd.DataFrame([{"kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "O", "family": "F",
                          "genus": s.split()[0], "species_epithet": s.split()[1], "common_name": ""} for s in species])


def _unit(*v):
    v = np.array(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_merged_prototypes_compete_fairly_with_texts():
    """A photo is nearer to photos of a related species (0.7) than to its own species' text (0.5):
    raw prototype cosines would take it; calibrated ones (scaled by text / prototype similarity)
    leave it to its text and still take the photos of the new species."""
    import torch

    from taxoclip.evaluate.prototypes import Prototypes, merge_prototypes
    from taxoclip.textbank import TextBank

    text = TextBank.from_arrays(np.eye(2, 4, dtype=np.float32), _taxa("Aa known", "Bb other"), name="text")
    proto = _unit(0.5, 0, 0.866, 0)  # the new species' prototype: cosine 0.5 with the text of "Aa known"
    protos = Prototypes(TextBank.from_arrays(proto[None], _taxa("Cc new"), name="mine"), resultant=np.array([0.9]),
                        prototype_similarity=0.75)
    merged = merge_prototypes(text, protos)
    assert merged.table["genus"].tolist() == ["Aa", "Bb", "Cc"]
    # its photos' cosine to their best text row: 0.9 (mean-vector length) x 0.5 = 0.45; / 0.75 = 0.6
    assert np.linalg.norm(merged.embeddings().numpy()[2]) == pytest.approx(0.6, abs=1e-3)
    known = _unit(0.5, 0, 0.5196, 0.693)  # cos 0.5 with its text "Aa known", 0.7 with the prototype
    new = _unit(0.45, 0, 0.779, 0.436)  # cos 0.9 with the prototype, 0.45 with "Aa known"
    feats = torch.from_numpy(np.stack([known, new]))
    assert merged.top_k(feats, 1, 10.0)[1][:, 0].tolist() == [0, 2]
    raw = merge_prototypes(text, protos, factor=1.0)
    assert raw.top_k(feats, 1, 10.0)[1][:, 0].tolist() == [2, 2]  # uncalibrated: the known photo is lost


def test_a_prototype_of_a_species_the_vocabulary_names_replaces_its_text_row():
    from taxoclip.evaluate.prototypes import Prototypes, merge_prototypes
    from taxoclip.textbank import TextBank

    text = TextBank.from_arrays(np.eye(3, 4, dtype=np.float32), _taxa("Aa one", "Aa two", "Bb three"))
    mine = Prototypes(TextBank.from_arrays(_unit(0, 1, 1, 0)[None], _taxa("Aa two")), np.array([1.0]), 0.7)
    merged = merge_prototypes(text, mine)
    assert merged.table["species_epithet"].tolist() == ["one", "three", "two"]


def test_prototypes_measure_how_near_a_new_photo_is_to_its_class():
    from taxoclip.evaluate.prototypes import _prototypes

    emb = np.stack([_unit(1, 0), _unit(0, 1), _unit(1, 1), _unit(1, -1)])
    cls = np.array(["a", "a", "b", "lonely"])
    protos, resultant, similarity = _prototypes(emb, cls, ["a", "b", "lonely"])
    assert protos[0] == pytest.approx(_unit(1, 1)) and resultant[0] == pytest.approx(np.sqrt(0.5))
    assert resultant[1:] == pytest.approx([1.0, 1.0])
    # left out of "a", each of its photos is compared with the other one: cosine 0 (orthogonal);
    # "b" and "lonely" have one photo each, nothing to leave out
    assert similarity == pytest.approx(0.0, abs=1e-6)
    assert _prototypes(emb[2:], cls[2:], ["b", "lonely"])[2] is None


def test_predict_with_prototypes_merged_into_a_vocabulary(tiny_model_dir, tmp_path):
    from helpers import write_vocabulary

    train = tmp_path / "train"
    _photos(train / "Vulpes vulpes", (200, 60, 20), 4, 0)
    _photos(train / "Cyanus bluebird", (20, 60, 200), 4, 1)
    _photos(tmp_path / "query", (20, 60, 200), 2, 2)
    protos = tmp_path / "protos"
    assert main(["prototypes", "build", str(train), "-o", str(protos), "--model", str(tiny_model_dir)]) == 0
    vocab = write_vocabulary(tmp_path / "vocab", dim=32, n=50)
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path / "query"), "--model", str(tiny_model_dir), "--vocabulary", str(vocab),
                 "--prototypes", str(protos), "--k", "60", "-o", str(out)]) == 0
    rows = pd.read_csv(out, keep_default_na=False)
    assert rows.groupby("file_name").size().tolist() == [52, 52]  # 50 texts + 2 prototypes, one softmax
    assert rows.groupby("file_name")["score"].sum().round(4).tolist() == [1.0, 1.0]
    assert {"Vulpes vulpes", "Cyanus bluebird"} <= set(rows["species"])


def test_prototypes_of_another_model_are_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    from helpers import save_tiny_model, write_vocabulary

    _photos(tmp_path / "train" / "Vulpes vulpes", (200, 60, 20), 2, 0)
    _photos(tmp_path / "query", (200, 60, 20), 1, 1)
    protos = tmp_path / "protos"
    assert main(["prototypes", "build", str(tmp_path / "train"), "-o", str(protos), "--model",
                 str(tiny_model_dir)]) == 0
    other = save_tiny_model(tmp_path / "other-model", seed=1)  # same architecture and width, other weights
    vocab = write_vocabulary(tmp_path / "vocab", dim=32, n=20)
    capsys.readouterr()
    for flags in (["--vocabulary", str(protos)], ["--vocabulary", str(vocab), "--prototypes", str(protos)]):
        assert main(["predict", str(tmp_path / "query"), "--model", str(other), *flags, "-o",
                     str(tmp_path / "x.csv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "embedding space" in err[0] and str(protos) in err[0]
    # the model that built them still reads them
    assert main(["predict", str(tmp_path / "query"), "--model", str(tiny_model_dir), "--vocabulary", str(protos),
                 "-o", str(tmp_path / "ok.csv")]) == 0
