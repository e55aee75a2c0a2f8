"""Add my species from a few photos: prototypes become a vocabulary that predict uses."""
import numpy as np
import pandas as pd
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
