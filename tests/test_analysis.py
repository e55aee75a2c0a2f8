"""Emergent-property analyses on embeddings built by hand, where the answer is known, and
`taxoclip analyze` end to end with a tiny model."""
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from taxoclip import analysis
from taxoclip.cli import main as cli
from taxoclip.errors import InputError

RANKS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]


def lineage(k, p, c, o, f, g, s):
    return dict(zip(RANKS, [k, p, c, o, f, g, s]))


def test_hierarchy_orders_pairs_by_shared_lineage():
    # genus-mates almost equal, family-mates close, the plant far: centroid cosine follows lineage
    e = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.8, 0.6, 0], [0, 0, 1.0]])
    labels = pd.DataFrame([lineage("A", "P", "C", "O", "F", "G", "G a"), lineage("A", "P", "C", "O", "F", "G", "G b"),
                           lineage("A", "P", "C", "O", "F", "H", "H c"), lineage("Pl", "T", "M", "R", "X", "Y", "Y d")])
    table, rho = analysis.hierarchy(e, labels)
    by = table.set_index("shared")
    assert by.loc["same genus", "pairs"] == 1 and by.loc["same family", "pairs"] == 2
    assert by.loc["different kingdom", "pairs"] == 3
    assert by.loc["same genus", "mean_cosine"] == pytest.approx(0.99 / np.hypot(0.99, 0.14))
    assert by.loc["same genus", "mean_cosine"] > by.loc["same family", "mean_cosine"] > \
        by.loc["different kingdom", "mean_cosine"] == 0
    assert rho > 0.8


def _two_genera(rng, noise=0.01):
    """Four species in two genera: photos tightly around corners of a square (genus = side)."""
    corners = {"G a": (1, 0.2), "G b": (1, -0.2), "H c": (-1, 0.2), "H d": (-1, -0.2)}
    rows, vecs = [], []
    for sp, (x, y) in corners.items():
        for _ in range(6):
            vecs.append([x, y, 0, 0] + rng.normal(0, noise, 4))
            rows.append(lineage("A", "P", "C", "O", "F", sp.split()[0], sp))
    return np.array(vecs), pd.DataFrame(rows)


def test_clusters_match_the_taxa_at_every_rank_they_separate():
    e, labels = _two_genera(np.random.default_rng(0))
    ami = analysis.cluster_agreement(e, labels).set_index("rank")
    assert list(ami.index) == ["genus", "species"]  # kingdom … family hold one taxon: nothing to cluster
    assert ami.loc["genus", "taxa"] == 2 and ami.loc["species", "photos"] == 24
    assert ami["ami"].tolist() == pytest.approx([1.0, 1.0])
    shuffled = labels.assign(species=labels["species"].sample(frac=1, random_state=0).to_numpy())
    shuffled["genus"] = shuffled["species"].str[0]
    assert analysis.cluster_agreement(e, shuffled).set_index("rank").loc["species", "ami"] < 0.2


def _sexed_species(shift_dim: int, rng, species=6, D=32, noise=0.01, per=4):
    """Species differ in dims 0-4; males and females of each species differ along `shift_dim`."""
    centres = np.zeros((species, D))
    centres[:, :5] = rng.normal(0, 1, (species, 5))
    rows, vecs = [], []
    for s in range(species):
        for sex, sign in (("male", 1), ("female", -1)):
            for _ in range(per):
                v = centres[s] + rng.normal(0, noise, D)
                v[shift_dim] += 0.5 * sign
                vecs.append(v)
                rows.append({**lineage("A", "P", "C", "O", "F", f"G{s}", f"G{s} x"), "sex": sex})
    return np.array(vecs), pd.DataFrame(rows)


def test_a_trait_orthogonal_to_species_differences_and_one_along_them():
    e, labels = _sexed_species(20, np.random.default_rng(0))
    out = analysis.trait_orthogonality(e, labels, labels["sex"], k=5)
    assert out["species"] == 6 and out["directions"] == 12 and out["k"] == 5
    assert out["within_abs_cos"] < 0.1  # sex lives in dim 20, outside the species subspace (dims 0-4)
    assert out["between_abs_cos"] == pytest.approx(1.0, abs=0.01)  # the species differences span it
    assert out["shuffled_abs_cos"] > 3 * out["within_abs_cos"]  # photo noise is spread over all 32 dims
    assert out["random_abs_cos"] == pytest.approx(np.sqrt(5 / 32), abs=0.05)
    e, labels = _sexed_species(0, np.random.default_rng(0))  # sex now moves photos along a species axis
    assert analysis.trait_orthogonality(e, labels, labels["sex"], k=5)["within_abs_cos"] > 0.8


def test_trait_separation_reads_the_trait_within_species_and_not_shuffled_values():
    e, labels = _sexed_species(20, np.random.default_rng(1))
    out = analysis.trait_separation(e, labels, labels["sex"])
    assert out["photos"] == 48 and out["values"] == 2 and out["chance"] == 0.5
    assert out["probe_balanced_accuracy"] == 1.0 and out["direction_auc"] == 1.0
    assert out["shuffled_probe"] < 0.75 and out["shuffled_auc"] < 0.75
    one = labels.copy()
    one.loc[0, "sex"] = "juvenile"  # a value seen on one photo only: nothing to hold out, left out
    out = analysis.trait_separation(e, one, one["sex"])
    assert out["values"] == 2 and out["left_out"] == 1 and out["photos"] == 47
    with pytest.raises(InputError, match="fewer than two values with two photos"):
        analysis.trait_separation(e[:5], one.iloc[:5], one["sex"].iloc[:5])  # one juvenile, 3 males, 1 female


def test_a_trait_no_species_varies_in_is_one_line():
    e, labels = _sexed_species(20, np.random.default_rng(0))
    with pytest.raises(InputError, match="no species has photos with two or more values of trait colour"):
        analysis.trait_orthogonality(e, labels, pd.Series(["red"] * len(labels), name="colour"))


def test_trait_ordering_finds_size_on_held_out_species():
    rng = np.random.default_rng(0)
    sizes = rng.uniform(10, 100, 30)
    e = np.concatenate([sizes[:, None] / 100, rng.normal(0, 0.3, (30, 15))], 1)  # size is one direction of many
    labels = pd.DataFrame([lineage("A", "P", "Aves", "O", "F", f"G{i}", f"G{i} x") for i in range(30)])
    summary, table = analysis.trait_ordering(e, labels, pd.Series(sizes, name="length"), permutations=199)
    assert summary["species"] == 30 and summary["rho"] > 0.8
    assert summary["p_value"] == pytest.approx(1 / 200)  # no shuffle of the values does as well
    assert sorted(table["value"]) == pytest.approx(sorted(sizes))


def test_trait_ordering_cannot_be_fitted_by_chance_in_a_wide_space():
    # 20 species in 64 dimensions: a regression fits any values exactly; held out, it orders nothing
    rng = np.random.default_rng(3)
    e = rng.normal(size=(20, 64))
    labels = pd.DataFrame([lineage("A", "P", "Aves", "O", "F", f"G{i}", f"G{i} x") for i in range(20)])
    summary, _ = analysis.trait_ordering(e, labels, pd.Series(rng.uniform(10, 100, 20)), permutations=199)
    assert summary["p_value"] > 0.05 and summary["rho"] < 0.5


def test_trait_ordering_refuses_what_it_cannot_order():
    e = np.eye(8)
    labels = pd.DataFrame([lineage("A", "P", "Aves", "O", "F", f"G{i}", f"G{i} x") for i in range(8)])
    with pytest.raises(InputError, match="at least 4"):
        analysis.trait_ordering(e, labels, pd.Series([1.0, 2.0, 3.0] + [None] * 5, name="length"))
    with pytest.raises(InputError, match="no numeric values .* categorical"):
        analysis.trait_ordering(e, labels, pd.Series(["big", "small"] * 4, name="size"))


def test_plots_are_small_pngs_and_need_matplotlib(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from taxoclip.analysis.plots import embedding_map, ordering_scatter

    e, labels = _two_genera(np.random.default_rng(0), noise=0.1)
    png = embedding_map(e, labels["species"], tmp_path / "map.png", "four species")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    table = pd.DataFrame({"species": ["a", "b", "c"], "value": [1.0, 2.0, 3.0], "position": [1.1, 1.9, 3.2]})
    ordering_scatter(table, {"rho": 1.0, "p_value": 0.01, "species": 3}, tmp_path / "order.png", "length")
    assert (tmp_path / "order.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on an install without the plots extra
    with pytest.raises(InputError, match=r"plots need matplotlib: pip install 'taxoclip\[plots\]'"):
        embedding_map(e, labels["species"], tmp_path / "again.png")


def _photo_set(tmp_path, species: list[str], per: int = 3):
    root = tmp_path / "set"
    (root / "img").mkdir(parents=True)
    rows, rng = [], np.random.default_rng(0)
    for s, name in enumerate(species):
        for i in range(per):
            px = np.clip(rng.normal(60 + 60 * s, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / "img" / f"{s}-{i}.jpg")
            rows.append({"filepath": f"img/{s}-{i}.jpg", "class": name, "kingdom": "Animalia", "order": "O",
                         "family": f"F{s % 2}", "genus": name.split()[0], "species": name,
                         "health": ["healthy", "sick"][i % 2], "length": 10.0 * (s + 1)})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def test_analyze_commands_end_to_end_and_their_one_line_errors(tmp_path, tiny_model_dir, capsys):
    root = _photo_set(tmp_path, ["Aa x", "Aa y", "Bb z", "Cc w"], per=4)
    m = ["--model", str(tiny_model_dir)]
    assert cli(["analyze", "hierarchy", str(root), *m, "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "hierarchy.csv")
    assert {"rho", "cos same genus", "ami species"} <= set(table.columns)
    assert cli(["analyze", "traits", str(root), *m, "--trait", "health"]) == 0
    assert "within_abs_cos" in capsys.readouterr().out
    assert cli(["analyze", "order", str(root), *m, "--trait", "length", "--permutations", "19"]) == 0
    assert "p_value" in capsys.readouterr().out
    values = tmp_path / "mass.csv"  # a per-species value from elsewhere, by binomial
    values.write_text("taxon,mass_g\nAa x,10\nAa y,20\nBb z,30\nCc w,40\nDd v,50\n")
    assert cli(["analyze", "order", str(root), *m, "--values", str(values), "--permutations", "19"]) == 0
    assert "| 4 |" in capsys.readouterr().out  # the four species of the set that the file names
    # a trait that does not exist: one line naming it and what the set has
    assert cli(["analyze", "traits", str(root), *m, "--trait", "caste"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'caste'" in err[0] and "health" in err[0]
    # one species: no hierarchy to measure
    one = _photo_set(tmp_path / "one", ["Aa x"])
    assert cli(["analyze", "hierarchy", str(one), *m]) == 2
    assert "need at least 3 species" in capsys.readouterr().err
    if __import__("importlib").util.find_spec("matplotlib"):
        assert cli(["analyze", "map", str(root), *m, "--colour", "genus", "--plot", str(tmp_path / "png")]) == 0
        assert len(list((tmp_path / "png").glob("map-genus-*.png"))) == 1
