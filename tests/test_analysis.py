"""Emergent-property analyses on embeddings built by hand, where the answer is known."""
import numpy as np
import pandas as pd
import pytest

from taxoclip import analysis
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
    assert by.loc["same genus", "mean_cosine"] > by.loc["same family", "mean_cosine"] > \
        by.loc["different kingdom", "mean_cosine"]
    assert rho > 0.8


def test_trait_direction_orthogonal_to_species_differences():
    rng = np.random.default_rng(0)
    D, species = 32, 6
    centres = np.zeros((species, D))
    centres[:, :5] = rng.normal(0, 1, (species, 5))  # species differ in dims 0-4
    rows, vecs = [], []
    for s in range(species):
        for sex, shift in (("male", 1), ("female", -1)):
            for _ in range(4):
                v = centres[s] + rng.normal(0, 0.01, D)
                v[20] += 0.5 * shift  # sex moves along dim 20 only
                vecs.append(v)
                rows.append({**lineage("A", "P", "C", "O", "F", f"G{s}", f"G{s} x"), "sex": sex})
    labels = pd.DataFrame(rows)
    out = analysis.trait_orthogonality(np.array(vecs), labels, labels["sex"], k=5)
    assert out["species"] == 6 and out["directions"] == 12
    assert out["within_species_share"] < 0.05 < 0.9 < out["between_species_share"]


def test_trait_ordering_finds_size_on_the_first_axis_and_refuses_too_few():
    sizes = np.arange(8, dtype=float)
    e = np.stack([np.concatenate([[s], np.zeros(7)]) + [0, 1, 0, 0, 0, 0, 0, 0] for s in sizes])
    labels = pd.DataFrame([lineage("A", "P", "Aves", "O", "F", f"G{i}", f"G{i} x") for i in range(8)])
    out = analysis.trait_ordering(e, labels, pd.Series(sizes * 3.0))
    assert out["species"] == 8 and out["rho"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="fewer than 3"):
        analysis.trait_ordering(e, labels, pd.Series(["big", "small"] + [""] * 6))
