"""Taxonomy alignment: kingdoms normalised, gaps kept, backbones fill only what is missing."""
from __future__ import annotations

from taxoclip.data.align import Aligner, Backbone, TableBackbone, load_backbone
from taxoclip.data.records import Record
from taxoclip.taxonomy import Taxon

PUMA = Taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Puma", "concolor", "cougar")


class DictBackbone:
    """A backbone from a dict, counting lookups."""

    name = "fake"

    def __init__(self, names: dict[str, Taxon]):
        self.names = names
        self.calls = 0

    def lookup(self, scientific_name: str) -> Taxon | None:
        self.calls += 1
        return self.names.get(scientific_name)


def rec(taxon: Taxon = Taxon(), name: str = "", **kw) -> Record:
    return Record(source_id="1", taxon=taxon, data_source="t", origin="x.jpg", scientific_name=name, **kw)


def test_fake_backbone_satisfies_the_protocol():
    assert isinstance(DictBackbone({}), Backbone)


def test_ncbi_and_eol_kingdom_names_become_gbif_names():
    r = rec(Taxon("Metazoa", "Chordata", "Mammalia"))
    assert Aligner().align(r) is None
    assert r.taxon.kingdom == "Animalia" and r.resolution == "given"
    r = rec(Taxon("Viridiplantae", "Tracheophyta"))
    Aligner().align(r)
    assert r.taxon.kingdom == "Plantae"


def test_empty_interior_ranks_stay_empty():
    gap = Taxon("Animalia", "Chordata", "Actinopterygii", "", "Pomacentridae", "Amphiprion", "clarkii")
    r = rec(gap)
    assert Aligner().align(r) is None
    assert r.taxon.order == "" and r.taxon.family == "Pomacentridae"


def test_a_name_alone_is_resolved_by_the_backbone_and_recorded():
    bb = DictBackbone({"Puma concolor": PUMA})
    r = rec(name="Puma concolor")
    assert Aligner([bb]).align(r) is None
    assert r.taxon == PUMA and r.resolution == "backbone:fake"


def test_backbone_fills_missing_ranks_without_overwriting_given_ones():
    bb = DictBackbone({"Puma concolor": PUMA})
    given = Taxon("", "", "", "", "", "Puma", "concolor", "mountain lion")
    r = rec(given)
    assert Aligner([bb]).align(r) is None
    assert r.taxon.kingdom == "Animalia" and r.taxon.family == "Felidae"
    assert r.taxon.common == "mountain lion"  # the source's common name wins
    assert r.resolution == "given+backbone:fake"


def test_a_homonym_in_another_kingdom_is_not_taken():
    plant = Taxon("Plantae", "Tracheophyta", "", "", "", "Morus", "alba")
    bb = DictBackbone({"Morus alba": Taxon("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "alba")})
    r = rec(Taxon("Plantae", "", "", "", "", "Morus", ""), name="Morus alba")
    Aligner([bb]).align(r)
    assert r.taxon.kingdom == "Plantae" and r.taxon.cls == ""  # nothing grafted from the bird
    assert plant.kingdom == r.taxon.kingdom


def test_backbones_are_consulted_in_order_and_lookups_are_cached():
    first, second = DictBackbone({}), DictBackbone({"Puma concolor": PUMA})
    aligner = Aligner([first, second])
    for _ in range(3):
        r = rec(name="Puma concolor")
        assert aligner.align(r) is None
        assert r.resolution == "backbone:fake"
    assert first.calls == 1 and second.calls == 1


def test_unresolved_records_say_why():
    r = rec(name="Nonexistia imaginaria")
    why = Aligner([DictBackbone({})]).align(r)
    assert why and "Nonexistia imaginaria" in why and r.resolution == "unresolved"
    assert "no taxonomy" in Aligner().align(rec())
    # a binomial without a kingdom is not guessed into the tree, unless asked
    r = rec(Taxon(genus="Puma", epithet="concolor"))
    assert "kingdom" in Aligner().align(r)
    r = rec(Taxon(genus="Puma", epithet="concolor"))
    assert Aligner(keep_partial=True).align(r) is None and r.resolution == "partial"


def test_a_source_taxonomy_error_is_the_reason():
    r = rec(meta={"taxonomy_error": "species 'Felis concolor' is not in genus 'Puma'"})
    assert "not in genus" in Aligner().align(r)


def test_a_taxa_table_is_a_backbone(tmp_path):
    table = tmp_path / "taxa.csv"
    table.write_text("kingdom,phylum,class,order,family,genus,species,common_name\n"
                     "Animalia,Chordata,Mammalia,Carnivora,Felidae,Puma,Puma concolor,cougar\n"
                     "Animalia,Chordata,Mammalia,Carnivora,Felidae,Felis,Felis catus,cat\n")
    bb = load_backbone(str(table))
    assert isinstance(bb, TableBackbone) and bb.name == "taxa"
    assert bb.lookup("Puma concolor (Linnaeus, 1771)") == PUMA
    assert bb.lookup("Felidae") == Taxon("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae")
    assert bb.lookup("Panthera leo") is None
