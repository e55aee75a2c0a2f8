"""Build inputs: the source registry picks the reader; tables and shard sets become Records."""
from __future__ import annotations

import json
import tarfile

import pytest

from data_helpers import LINEAGES, jpeg, photo, tar_add, write_folder_with_table, write_shard_set
from taxoclip.data.sources import SourceOptions, detect_source, read_source
from taxoclip.errors import InputError
from taxoclip.taxonomy import Taxon


def test_each_input_kind_is_claimed_by_its_source(tmp_path):
    write_shard_set(tmp_path / "shards", 3)
    write_folder_with_table(tmp_path / "table_folder", 2)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.jpg").write_bytes(jpeg(photo(1)))
    (tmp_path / "dwca").mkdir()
    (tmp_path / "dwca" / "meta.xml").write_text("<archive/>")
    (tmp_path / "export.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert detect_source(tmp_path / "shards").name == "shards"
    assert detect_source(tmp_path / "shards" / "train-000.tar").name == "shards"
    assert detect_source(tmp_path / "table_folder").name == "table"
    assert detect_source(tmp_path / "table_folder" / "labels.csv").name == "table"
    assert detect_source(tmp_path / "plain").name == "images"
    assert detect_source(tmp_path / "dwca").name == "dwca"
    assert detect_source(tmp_path / "export.zip").name == "dwca"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: not a dataset input"):
        detect_source(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        detect_source(tmp_path / "nope")


def test_a_shard_set_yields_taxonomy_metadata_and_bytes_in_order(tmp_path):
    keys = write_shard_set(tmp_path / "set", 7, per_shard=3)
    records = list(read_source(tmp_path / "set"))
    assert [r.source_id for r in records] == keys
    first = records[0]
    assert first.taxon == Taxon(*LINEAGES[0])
    assert first.data_source == "set" and first.license == "CC0" and first.traits == {"n": 0}
    assert first.image[:2] == b"\xff\xd8" and first.origin.endswith("train-000.tar/s-00000.jpg")
    assert records[2].taxon.family == "" and records[2].taxon.order == "Agaricales"  # gaps kept


def test_bio_mini_json_is_read_as_given(bio_mini):
    shard = sorted((bio_mini / "apple").glob("train-*.tar"))[0]
    r = next(iter(read_source(shard)))
    assert r.taxon.genus == "Malus" and r.taxon.epithet == "domestica" and r.taxon.kingdom == "Plantae"
    assert r.data_source == "apple" and r.source_id.startswith("apple-")
    assert "health" in r.traits and r.meta["split"] == "train"


def test_a_truncated_shard_yields_what_it_has_and_an_error(tmp_path):
    write_shard_set(tmp_path / "set", 4)
    shard = tmp_path / "set" / "train-000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    records = list(read_source(shard))
    assert records[-1].error and "cannot read shard" in records[-1].error
    assert all(not r.error for r in records[:-1]) and len(records) >= 2


def test_table_with_scientific_names_only(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(photo(1)))
    (tmp_path / "t.csv").write_text("filepath,scientific_name,source_id\na.jpg,Puma concolor (Linnaeus 1771),occ-1\n")
    (r,) = read_source(tmp_path / "t.csv")
    assert r.scientific_name == "Puma concolor (Linnaeus 1771)"
    assert (r.taxon.genus, r.taxon.epithet, r.source_id) == ("Puma", "concolor", "occ-1")
    assert r.path == str(tmp_path / "a.jpg")


def test_table_with_a_label_joined_to_a_taxa_table(tmp_path):
    (tmp_path / "taxa.csv").write_text("label,kingdom,phylum,class,order,family,genus,species,common_name\n"
                                       "cougar,Animalia,Chordata,Mammalia,Carnivora,Felidae,Puma,Puma concolor,cougar\n")
    (tmp_path / "photos.csv").write_text("filepath,label\na.jpg,cougar\nb.jpg,unicorn\n")
    recs = list(read_source(tmp_path / "photos.csv", SourceOptions(taxa=str(tmp_path / "taxa.csv"))))
    assert recs[0].taxon == Taxon(*LINEAGES[0])
    assert recs[1].taxon.empty and "unicorn" in recs[1].meta["unresolved_reason"]


def test_parquet_tables_work_like_csv(tmp_path):
    import pandas as pd

    pd.DataFrame({"filepath": ["a.jpg"], "kingdom": ["Animalia"], "genus": ["Puma"], "species": ["Puma concolor"],
                  "traits": [json.dumps({"sex": "f"})]}).to_parquet(tmp_path / "t.parquet")
    (r,) = read_source(tmp_path / "t.parquet")
    assert r.taxon.kingdom == "Animalia" and r.traits == {"sex": "f"}


@pytest.mark.parametrize("header, message", [
    ("name,kingdom\n", "no image column"),
    ("filepath,notes\n", "no taxonomy columns"),
    ("filepath,label\n", "--taxa"),
])
def test_bad_tables_are_refused_naming_the_file_and_the_problem(tmp_path, header, message):
    (tmp_path / "t.csv").write_text(header + "x.jpg,y\n")
    with pytest.raises(InputError, match=message) as e:
        list(read_source(tmp_path / "t.csv"))
    assert "t.csv" in str(e.value)


def test_unknown_rank_and_conflicting_binomial_are_reasons_not_crashes(tmp_path):
    (tmp_path / "t.csv").write_text("filepath,scientificName,taxonRank,genus,species\n"
                                    "a.jpg,Felinae,tribe,,\n"
                                    "b.jpg,,,Puma,Felis catus\n")
    a, b = read_source(tmp_path / "t.csv")
    assert "unknown rank 'tribe'" in a.meta["unresolved_reason"]
    assert b.taxon.empty and "not in genus" in b.meta["taxonomy_error"]


def test_image_folder_reads_sub_folder_names_as_scientific_names(tmp_path):
    (tmp_path / "Puma concolor").mkdir()
    (tmp_path / "Puma concolor" / "1.jpg").write_bytes(jpeg(photo(1)))
    (tmp_path / "top.jpg").write_bytes(jpeg(photo(2)))
    recs = {r.source_id: r for r in read_source(tmp_path)}
    assert recs["Puma concolor/1.jpg"].scientific_name == "Puma concolor"
    assert recs["Puma concolor/1.jpg"].taxon.genus == "Puma"
    assert recs["top.jpg"].taxon.empty


def test_a_sample_without_an_image_is_an_error_record(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar_add(tar, "k1.json", b'{"kingdom": "Animalia"}')
    (r,) = read_source(tmp_path / "x.tar")
    assert "no image" in r.error
