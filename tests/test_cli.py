"""The `taxoclip` command line as users run it: outputs, exit codes and one-line errors."""
import subprocess
import sys

import pandas as pd
import pytest

from taxoclip.cli import main

BIOCLIP = ("--model", "bioclip-2")  # the tests of the hub path run against a fake offline hub


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from taxoclip.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'open_clip', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_predict_species_csv(offline_hub, photos, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    code, _, err = run(["predict", *photos[:3], *BIOCLIP, "--k", "2", "--output", out, "--workers", "0"], capsys)
    assert code == 0, err
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["file_name", "kingdom", "phylum", "class", "order", "family", "genus",
                                "species_epithet", "species", "common_name", "score", "error"]
    assert df.file_name.tolist() == [str(p) for p in photos[:3] for _ in range(2)]
    assert (df.score > 0).all() and (df.error == "").all()


def test_predict_rank_subset_and_table(offline_hub, photos, tmp_path, capsys):
    code, out, _ = run(["predict", photos[0], *BIOCLIP, "--rank", "family", "--format", "table"], capsys)
    assert code == 0 and out.startswith("+") and "family" in out.splitlines()[1]
    families = run(["list-taxa", *BIOCLIP, "--rank", "family"], capsys)[1]
    first = families.splitlines()[1].split(",")[4]
    sub = tmp_path / "sub.csv"
    sub.write_text(f"family\n{first}\n")
    code, out, _ = run(["predict", photos[0], *BIOCLIP, "--subset", sub, "--k", "3", "--format", "jsonl"], capsys)
    assert code == 0 and all(f'"family": "{first}"' in line for line in out.strip().splitlines())


def test_predict_custom_labels_and_bins(tiny_model_dir, photos, tmp_path, capsys):
    code, out, _ = run(["predict", photos[0], "--model", tiny_model_dir, "--cls", "fox,wolf,oak"], capsys)
    assert code == 0
    rows = out.strip().splitlines()
    assert rows[0] == "file_name,classification,score,error" and len(rows) == 4
    bins = tmp_path / "bins.csv"
    bins.write_text("label,bin\nfox,canid\nwolf,canid\noak,plant\n")
    code, out, _ = run(["predict", photos[0], "--model", tiny_model_dir, "--bins", bins], capsys)
    assert code == 0 and {line.split(",")[1] for line in out.strip().splitlines()[1:]} == {"canid", "plant"}


def test_bad_and_good_photos_in_one_run(offline_hub, photos, tmp_path, capsys):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    out = tmp_path / "mixed.csv"
    code, _, err = run(["predict", photos[0], bad, photos[1], *BIOCLIP, "--k", "1", "-o", out, "--workers", "0"], capsys)
    assert code == 1
    assert f"{bad}: not an image" in err and "1 of 3 images could not be read" in err
    df = pd.read_csv(out, keep_default_na=False)
    assert df.file_name.tolist() == [str(photos[0]), str(bad), str(photos[1])]
    assert df.error.tolist()[1].startswith("not an image") and df.score.tolist()[1] == ""


def test_unknown_model_is_one_line(photos, capsys):
    code, _, err = run(["predict", photos[0], "--model", "no-such-model"], capsys)
    assert code == 2 and "unknown model 'no-such-model'" in err and len(err.strip().splitlines()) == 1


def test_k_must_be_positive(photos, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(photos[0]), "--k", "0"])
    assert exit_.value.code == 2 and "must be a positive integer, got 0" in capsys.readouterr().err


def test_missing_weights_offline(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(["predict", photos[0], *BIOCLIP], capsys)
    assert code == 2 and "bioclip-2" in err and "HF_HUB_OFFLINE" in err
    assert len(err.strip().splitlines()) == 1


def test_subset_with_unknown_first_column(offline_hub, photos, tmp_path, capsys):
    sub = tmp_path / "s.csv"
    sub.write_text("tribe\nX\n")
    code, _, err = run(["predict", photos[0], *BIOCLIP, "--subset", sub], capsys)
    assert code == 2 and "must be one of kingdom, phylum" in err and str(sub) in err


def test_empty_folder_and_folder_of_non_images(offline_hub, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["predict", empty], capsys)
    assert code == 2 and err.strip() == f"taxoclip predict: {empty}: no images in folder (no files)"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("x")
    (docs / "b.csv").write_text("y")
    code, _, err = run(["predict", docs], capsys)
    assert code == 2 and "2 files, none with an image extension" in err


def test_empty_folder_next_to_valid_photos_still_writes_them(offline_hub, photos, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    code, out, err = run(["predict", empty, photos[0], *BIOCLIP, "--k", "1"], capsys)
    assert code == 1 and "no images in folder" in err
    assert len(out.strip().splitlines()) == 2


def test_embed_json_like_pybioclip(tiny_model_dir, photos, tmp_path, capsys):
    out = tmp_path / "emb.json"
    code, _, _ = run(["embed", *photos[:2], "--model", tiny_model_dir, "-o", out], capsys)
    import json

    data = json.loads(out.read_text())
    assert code == 0 and data["model"] == str(tiny_model_dir)
    assert list(data["embeddings"]) == [str(p) for p in photos[:2]] and len(data["embeddings"][str(photos[0])]) == 32


def test_list_models_and_taxa(offline_hub, capsys):
    code, out, _ = run(["list-models"], capsys)
    assert code == 0 and out.startswith("taxoclip-mini") and "(default)" in out.splitlines()[0]
    assert "bioclip-2" in out and "ViT-L-14" not in out  # open_clip's architectures only with --all
    code, out, _ = run(["list-models", "--all"], capsys)
    assert code == 0 and "ViT-L-14" in out.splitlines()
    code, out, _ = run(["list-tol-taxa", *BIOCLIP], capsys)
    assert out.splitlines()[0] == "kingdom,phylum,class,order,family,genus,species_epithet,species,common_name"
    assert len(out.splitlines()) == 1 + 298
