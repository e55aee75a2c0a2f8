"""Ranks, taxa, lineage parsing and the caption texts a user and the trainer rely on."""
import pytest

from taxoclip.taxonomy import (
    CAPTION_FILES, RANKS, Rank, Taxon, apply_templates, captions, normalize_kingdom, parse_lineage, render_caption,
)

PUMA = Taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Puma", "concolor", "cougar")


def test_rank_names_values_and_parsing():
    assert [r.value for r in Rank] == list(range(7))
    assert RANKS == ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    assert Rank.parse("Family") is Rank.FAMILY and Rank.parse(6) is Rank.SPECIES
    assert Rank.CLASS.get_label() == "class"
    with pytest.raises(ValueError, match="unknown rank 'tribe'"):
        Rank.parse("tribe")


def test_binomial_and_epithet_are_the_same_taxon():
    a = Taxon.from_record({"genus": "Malus", "species": "Malus domestica"})
    b = Taxon.from_record({"genus": "Malus", "specificEpithet": "domestica"})
    c = Taxon.from_ranks(["", "", "", "", "", "Malus", "Malus domestica"])
    assert a == b == c
    assert a.epithet == "domestica" and a.species == "Malus domestica"


def test_binomial_in_another_genus_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="not in genus"):
        Taxon.from_record({"genus": "Felis", "species": "Puma concolor"})


def test_empty_interior_ranks_are_kept():
    t = Taxon.from_ranks(["Animalia", "Chordata", "", "Carnivora", "", "Puma", "concolor"])
    assert t.ranks == ("Animalia", "Chordata", "", "Carnivora", "", "Puma", "concolor")
    assert t.taxonomic_name == "Animalia Chordata Carnivora Puma concolor"
    assert t.rank is Rank.SPECIES
    assert t.truncate(Rank.ORDER).ranks[:4] == ("Animalia", "Chordata", "", "Carnivora")


def test_darwin_core_record_with_authorship_and_vernacular_name():
    t = Taxon.from_record({"kingdom": "Metazoa", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
                           "family": "Corvidae", "genus": "Corvus",
                           "scientificName": "Corvus corax Linnaeus, 1758", "taxonRank": "SPECIES",
                           "vernacularName": "Common Raven"})
    assert t.kingdom == "Animalia" and t.species == "Corvus corax" and t.common == "Common Raven"


def test_darwin_core_record_above_species_rank():
    t = Taxon.from_record({"kingdom": "Plantae", "scientificName": "Rosaceae Juss.", "taxonRank": "family"})
    assert t.family == "Rosaceae" and t.epithet == "" and t.rank is Rank.FAMILY


@pytest.mark.parametrize("text", [
    "5a565886-156e-4b19-a017-6a5bbae4df0f;mammalia;carnivora;felidae;puma;concolor;puma",
    "MAMMALIA;CARNIVORA;FELIDAE;PUMA;CONCOLOR;puma",
    "12;mammalia;carnivora;felidae;puma;concolor;puma",
])
def test_speciesnet_lineages_any_case_with_or_without_id(text):
    t = parse_lineage(text)
    assert (t.cls, t.order, t.family, t.genus, t.epithet) == ("Mammalia", "Carnivora", "Felidae", "Puma", "concolor")
    assert t.kingdom == "" and t.phylum == ""
    assert t.common.lower() == "puma"


def test_seven_and_eight_field_lineages_and_blank():
    t = parse_lineage("animalia;chordata;aves;passeriformes;corvidae;corvus;corax;common raven")
    assert t.species == "Corvus corax" and t.common == "common raven" and t.kingdom == "Animalia"
    assert parse_lineage("Animalia;Chordata;Aves;;;;").rank is Rank.CLASS
    blank = parse_lineage("f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank")
    assert blank.empty and blank.common == "blank"
    with pytest.raises(ValueError, match="cannot read lineage"):
        parse_lineage("a;b;c")


def test_kingdom_synonyms():
    assert normalize_kingdom("Metazoa") == "Animalia"
    assert normalize_kingdom("Viridiplantae") == normalize_kingdom("archaeplastida") == "Plantae"
    assert normalize_kingdom("fungi") == "Fungi"


def test_captions_read_like_the_reference_shards():
    c = captions(PUMA)
    assert set(c) == set(CAPTION_FILES) and len(c) == 10
    assert c["sci.txt"] == "a photo of Puma concolor."
    assert c["com.txt"] == "a photo of cougar."
    assert c["taxon.txt"] == "a photo of Animalia Chordata Mammalia Carnivora Felidae Puma concolor."
    assert c["taxonTag.txt"] == ("a photo of kingdom Animalia phylum Chordata class Mammalia order Carnivora "
                                 "family Felidae genus Puma species concolor.")
    assert c["sci_com.txt"] == "a photo of Puma concolor with common name cougar."
    assert c["taxon_com.txt"].endswith("Puma concolor with common name cougar.")
    assert c["scientific_name.txt"] == "Puma concolor" and c["common_name.txt"] == "cougar"


def test_captions_fall_back_when_names_are_missing():
    order_only = Taxon("Animalia", "Arthropoda", "Insecta", "Diptera", common="fly")
    assert render_caption(order_only, "sci") == "a photo of Diptera."
    no_common = Taxon("Plantae", genus="Quercus")
    assert render_caption(no_common, "com") == "a photo of Quercus."
    assert render_caption(no_common, "taxonTag") == "a photo of kingdom Plantae genus Quercus."
    with pytest.raises(ValueError, match="unknown text type"):
        render_caption(PUMA, "latin")
    with pytest.raises(ValueError):
        captions(Taxon())


def test_vocabulary_text_and_templates():
    assert PUMA.vocabulary_text == "Animalia Chordata Mammalia Carnivora Felidae Puma concolor cougar"
    prompts = apply_templates("cougar", "bioclip")
    assert len(prompts) == 81 and prompts[-1] == "a photo of cougar." and prompts[0] == "a bad photo of a cougar."
    assert len(apply_templates("x")) == 80
    with pytest.raises(ValueError):
        apply_templates("x", "nope")


def test_pybioclip_keys():
    d = PUMA.as_dict()
    assert list(d) == ["kingdom", "phylum", "class", "order", "family", "genus", "species_epithet", "species",
                       "common_name"]
    assert d["species"] == "Puma concolor" and d["species_epithet"] == "concolor"
    assert Taxon.from_tol_entry(PUMA.to_tol_entry()) == PUMA
