"""Fuzzed inputs (issue 14, item 4): every parser of user input either returns a valid result or
raises taxoclip's own one-line error (`TaxoclipError`) naming the input, never anything else.

Hypothesis generates the inputs: random text and bytes, and structured ones built from the
pieces the formats are made of (field names, separators, ids, numbers of the wrong type), so
that most examples get past the first check. Runs are reproducible (`derandomize=True`, no
example database) and bounded (`max_examples`); the whole file takes well under a minute.
"""
from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from taxoclip.errors import TaxoclipError  # noqa: E402
from taxoclip.taxonomy import Taxon, parse_lineage  # noqa: E402


def fuzz(examples: int):
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def refused_or(fn, *args, names: str | None = None):
    """`fn(*args)`, or None when it refuses with our own error: one line that names `names`."""
    try:
        result = fn(*args)
        event("parsed")
        return result
    except TaxoclipError as e:
        event("refused")
        message = str(e)
        assert message and "\n" not in message, repr(message)
        if names is not None:
            assert names in message, (names, message)
        return None


# ----- pieces the formats are made of ----------------------------------------------------------
WORDS = ["", " ", "Puma", "concolor", "Puma concolor", "puma", "x", "×", "Animalia", "plantae", "METAZOA", "ex",
         "(Linnaeus, 1771)", "12345", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "0" * 32, "nan", "None", "\t",
         "Quercus robur L.", "é", "🦊", "a;b", ",", '"', "\x00", "species", "genus"]
word = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
name = st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=9)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True), word)
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                          st.dictionaries(word, inner, max_size=6)), max_leaves=20)


def mostly(valid, wild=json_value, n: int = 8):
    """Mostly valid (about `n` in `n + 1` draws): deep enough into the format to reach every check."""
    return st.sampled_from([True] * n + [False]).flatmap(lambda ok: valid if ok else wild)


def _write(folder: Path, filename: str, content: str | bytes) -> Path:
    path = folder / filename
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    return path


def _valid_taxon(t: Taxon) -> None:
    assert isinstance(t, Taxon)
    assert all(isinstance(v, str) and v == " ".join(v.split()) for v in (*t.ranks, t.common))


# ----- lineage strings, rank lists, records ------------------------------------------------------
@fuzz(400)
@given(st.one_of(st.text(max_size=60), st.lists(word, max_size=10).map(";".join)))
def test_lineage_strings_parse_or_are_refused(text):
    t = refused_or(parse_lineage, text)
    if t is not None:
        _valid_taxon(t)
        assert t.genus == t.genus.capitalize() and t.epithet == t.epithet.lower()


@fuzz(200)
@given(kingdom=st.sampled_from(["Animalia", "Plantae", "Fungi", "Bacteria"]),
       middle=st.lists(name.map(str.capitalize), min_size=5, max_size=5), epithet=name,
       common=st.one_of(st.none(), st.text(alphabet=string.ascii_letters + " -'", max_size=20)))
def test_a_lineage_written_from_a_taxon_reads_back_as_it_in_any_case(kingdom, middle, epithet, common):
    taxon = Taxon(kingdom, *middle, epithet, common or "")
    text = ";".join([*taxon.ranks] + ([] if common is None else [common]))
    assert parse_lineage(text) == taxon
    assert parse_lineage(text.upper()).ranks == taxon.ranks


@fuzz(200)
@given(st.dictionaries(st.one_of(st.sampled_from(["kingdom", "phylum", "class", "order", "family", "genus",
                                                  "species", "specificEpithet", "species_epithet", "scientificName",
                                                  "taxonRank", "vernacularName", "common_name", "Species Epithet"]),
                                 word), scalar, max_size=10))
def test_records_parse_or_are_refused(record):
    t = refused_or(Taxon.from_record, record)
    if t is not None:
        _valid_taxon(t)


@fuzz(200)
@given(mostly(st.tuples(st.lists(st.one_of(word, name), min_size=7, max_size=7), st.one_of(st.none(), word)),
             st.one_of(json_value, st.tuples(st.lists(scalar, max_size=9), scalar)), n=3))
def test_vocabulary_entries_parse_or_are_refused(entry):
    t = refused_or(Taxon.from_tol_entry, entry)
    if t is not None:
        _valid_taxon(t)


# ----- CSV files: subset, bins, taxa tables -------------------------------------------------------
HEADERS = ["species", "genus", "Family", "label", "bin", "kingdom", "phylum", "class", "order", "scientific_name",
           "common_name", "filepath", "path", "", "x"]


def csv_text(columns=st.sampled_from(HEADERS)):
    """Mostly well-formed CSV with plausible headers and hostile cells, or any text at all."""
    cell = st.one_of(word, st.text(max_size=8))
    table = st.tuples(st.lists(columns, min_size=0, max_size=5), st.lists(st.lists(cell, max_size=6), max_size=6))
    rendered = table.map(lambda t: "\n".join([",".join(t[0])] + [",".join(r) for r in t[1]]))
    return mostly(rendered, st.one_of(st.text(max_size=80), st.binary(max_size=80)), n=4)


@fuzz(150)
@given(content=csv_text())
def test_subset_csvs_parse_or_are_refused(tmp_path, content):
    from taxoclip.taxonomy import Rank
    from taxoclip.textbank import read_subset_csv

    path = _write(tmp_path, "subset.csv", content)
    got = refused_or(read_subset_csv, path, names=str(path))
    if got is not None:
        rank, values = got
        assert isinstance(rank, Rank) and all(isinstance(v, str) for v in values)


@fuzz(150)
@given(content=csv_text())
def test_bins_csvs_parse_or_are_refused(tmp_path, content):
    from taxoclip.textbank import read_bins_csv

    path = _write(tmp_path, "bins.csv", content)
    got = refused_or(read_bins_csv, path, names=str(path))
    if got is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in got.items())


@fuzz(150)
@given(content=csv_text(), ext=st.sampled_from([".csv", ".parquet"]))
def test_taxa_tables_parse_or_are_refused(tmp_path, content, ext):
    from taxoclip.textbank import _read_taxa

    path = _write(tmp_path, "taxa" + ext, content)
    got = refused_or(_read_taxa, path, names=str(path))
    if got is not None:
        assert got and all(not t.empty for t in got)
        for t in got:
            _valid_taxon(t)


# ----- list files and what find_images makes of them ---------------------------------------------
@fuzz(150)
@given(content=st.one_of(csv_text(), st.lists(word, max_size=8).map("\n".join)),
       ext=st.sampled_from([".txt", ".csv", ".tsv", ".lst"]))
def test_list_files_give_images_or_one_problem_line(tmp_path, content, ext):
    from taxoclip.io.images import ImageRef, find_images

    path = _write(tmp_path, "list" + ext, content)
    refs, problems = find_images([path])  # never raises: a bad list is one problem line
    assert all(isinstance(r, ImageRef) and isinstance(r.name, str) for r in refs)
    assert all(str(path) in p and "\n" not in p for p in problems)
    assert bool(refs) != bool(problems)


# ----- the published vocabulary (txt_emb_species.npy + .json) ------------------------------------
entry = st.one_of(st.tuples(st.lists(st.one_of(word, name), min_size=7, max_size=7), st.one_of(st.none(), word)),
                  json_value)


@fuzz(60)
@given(names=st.one_of(st.lists(entry, min_size=1, max_size=4), json_value))
def test_published_vocabulary_names_load_or_are_refused(tmp_path_factory, names):
    import torch

    from taxoclip.textbank import TextBank

    folder = tmp_path_factory.mktemp("vocab")
    n = len(names) if isinstance(names, list) and names else 3
    np.save(folder / "txt_emb_species.npy", np.asfortranarray(np.random.default_rng(0).normal(size=(8, n)),
                                                              dtype=np.float32))
    (folder / "txt_emb_species.json").write_text(json.dumps(names))
    bank = refused_or(lambda: TextBank.from_published(folder, dtype=torch.float32), names=str(folder))
    if bank is not None:
        assert len(bank) == n and bank.dim == 8
        assert all(isinstance(v, str) for v in bank.table["genus"])


# ----- MegaDetector batch files -------------------------------------------------------------------
unit = st.floats(0, 1)
box = mostly(st.lists(st.floats(-0.2, 1.2), min_size=4, max_size=4), st.lists(scalar, max_size=5))
classification = st.tuples(st.sampled_from(["1", "2", "9"]), st.one_of(unit, scalar))
detection = st.fixed_dictionaries(
    {"category": mostly(st.sampled_from(["1", "2", "3"]), scalar), "conf": mostly(unit, scalar), "bbox": box},
    optional={"classifications": mostly(st.lists(classification, max_size=3)), "prediction": scalar,
              "prediction_score": scalar})
image = st.fixed_dictionaries({"file": mostly(st.sampled_from(["a.jpg", "cam/b.JPG", "é.jpg"]), scalar, 12)}, optional={
    "detections": mostly(st.lists(mostly(detection), max_size=3)), "failure": scalar,
    "prediction": mostly(st.lists(word, min_size=6, max_size=8).map(";".join), scalar),
    "prediction_score": scalar, "prediction_rank": scalar,
    "prediction_description": mostly(st.lists(word, max_size=8).map(";".join), scalar),
    "datetime": scalar, "latitude": scalar, "longitude": scalar, "width": scalar, "height": scalar})
md_doc = st.fixed_dictionaries({
    "info": mostly(st.fixed_dictionaries({"format_version": st.sampled_from(["1.6", "1.5", "1.4", "1.1", "1.0"])})),
    "detection_categories": mostly(st.just({"1": "animal", "2": "person", "3": "vehicle"})),
    "images": mostly(st.lists(mostly(image, n=12), max_size=4))}, optional={
    "classification_categories": mostly(st.dictionaries(st.sampled_from(["1", "2"]), word, max_size=2)),
    "classification_category_descriptions": mostly(
        st.dictionaries(st.sampled_from(["1", "2"]), st.lists(word, max_size=8).map(";".join), max_size=2))})


@fuzz(250)
@given(doc=mostly(md_doc))
def test_megadetector_files_read_or_are_refused(tmp_path, doc):
    from taxoclip.camtrap.mdjson import read_md_json

    path = tmp_path / "md.json"
    path.write_text(json.dumps(doc))
    got = refused_or(read_md_json, path, names=str(path))
    if got is not None:
        frames, meta = got
        for f in frames:
            assert isinstance(f.file, str) and f.file
            assert (f.failure is None) != (f.detections is None)
            for d in f.detections or []:
                assert 0 <= d.conf <= 1 and all(0 <= v <= 1 for v in d.bbox) and not any(map(math.isnan, d.bbox))


@fuzz(40)
@given(content=st.one_of(st.text(max_size=120), st.binary(max_size=120)))
def test_megadetector_files_that_are_not_json_are_refused(tmp_path, content):
    from taxoclip.camtrap.mdjson import read_md_json

    refused_or(read_md_json, _write(tmp_path, "md.json", content), names=str(tmp_path / "md.json"))


# ----- Darwin Core Archives: meta.xml and the tables it describes -------------------------------------
DWC = "http://rs.tdwg.org/dwc/terms/"
TERMS = [DWC + t for t in ("scientificName", "kingdom", "genus", "specificEpithet", "vernacularName")] + [
    "http://purl.org/dc/terms/identifier", "http://purl.org/dc/terms/type", "", "x"]
index = mostly(st.sampled_from(["0", "1", "2", "3"]), st.sampled_from(["-1", "", "x", "1e3", "99", " 2 "]))
odd = st.text(alphabet=string.printable, max_size=4)


def xml_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\x00", ""))


def element(tag: str, attrs: dict, children: str = "", text: str = "") -> str:
    a = "".join(f' {k}="{xml_escape(v)}"' for k, v in attrs.items() if v is not None)
    return f"<{tag}{a}>{xml_escape(text)}{children}</{tag}>"


field_el = st.builds(lambda term, i, default: element("field", {"term": term, "index": i, "default": default}),
                     st.sampled_from(TERMS), st.one_of(st.none(), index), st.one_of(st.none(), word))
table_attrs = st.fixed_dictionaries({}, optional={
    "fieldsTerminatedBy": mostly(st.sampled_from(["\\t", ",", ";"]), st.sampled_from(["", "\\n", '"', "ab", "\\r"])),
    "fieldsEnclosedBy": mostly(st.sampled_from(["", '"', "'"]), st.sampled_from([",", "\\t", "ab", "\\n"])),
    "encoding": mostly(st.sampled_from(["UTF-8", "utf8", "latin-1"]), st.sampled_from(["nope", "", "utf-16"])),
    "ignoreHeaderLines": mostly(st.sampled_from(["0", "1"]), odd), "linesTerminatedBy": odd})


def table_el(tag: str, row_type: str, location: str):
    return st.builds(
        lambda a, loc, rt, i, fields: element(tag, {"rowType": rt, **a}, element("files", {}, element("location", {},
                                                                                                       text=loc))
                                              + element("id" if tag == "core" else "coreid", {"index": i})
                                              + "".join(fields)),
        table_attrs, mostly(st.just(location), st.sampled_from(["../secret.txt", "/etc/passwd", "", "missing.txt",
                                                                location.upper(), "a\x00b", "sub/../" + location])),
        mostly(st.just(row_type), st.sampled_from(["", DWC + "Taxon", "x"])), mostly(st.just("0"), index),
        st.lists(field_el, max_size=4))


meta_xml = st.builds(lambda core, exts: '<archive xmlns="http://rs.tdwg.org/dwc/text/">' + core + "".join(exts)
                     + "</archive>",
                     table_el("core", DWC + "Occurrence", "occurrence.txt"),
                     st.lists(table_el("extension", "http://rs.gbif.org/terms/1.0/Multimedia", "multimedia.txt"),
                              max_size=2))
data_text = st.lists(st.lists(st.one_of(word, st.text(max_size=6)), max_size=5).map("\t".join), max_size=5).map(
    "\n".join)


@fuzz(250)
@given(meta=mostly(meta_xml, st.one_of(st.text(max_size=100), st.just(""))), data=data_text, media=data_text,
       no_meta=st.booleans())
def test_dwca_meta_xml_and_its_tables_read_or_are_refused(tmp_path_factory, meta, data, media, no_meta):
    from taxoclip.io.dwca import Archive

    folder = tmp_path_factory.mktemp("dwca")
    if not no_meta:  # without meta.xml, occurrence.txt's header line names the terms
        (folder / "meta.xml").write_text(meta, encoding="utf-8", errors="surrogatepass")
    (folder / "occurrence.txt").write_text(data, encoding="utf-8", errors="surrogatepass")
    (folder / "multimedia.txt").write_text(media, encoding="utf-8", errors="surrogatepass")
    with Archive(folder) as archive:
        tables = refused_or(archive.tables, names=str(folder))
        for table in tables or ():
            if table is not None:
                rows = refused_or(lambda: list(table.rows(archive)), names=str(folder))
                for row in rows or ():
                    assert all(isinstance(k, str) and isinstance(v, str) for k, v in row.items()) and row["\0id"]
