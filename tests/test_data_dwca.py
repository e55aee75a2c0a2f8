"""read_dwca on small archives laid out like GBIF downloads and iNaturalist exports.

Each test writes its archive (meta.xml + data files) into a temporary folder or zip; the last
ones serve the images from a local HTTP server and fetch them with fetch_all.
"""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest

from taxoclip.data.dwca import DwcaStats, read_dwca
from taxoclip.errors import InputError
from taxoclip.taxonomy import Taxon

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
GBIF = "http://rs.gbif.org/terms/1.0/"
AC = "http://rs.tdwg.org/ac/terms/"
XMP = "http://ns.adobe.com/xap/1.0/rights/"

GBIF_OCC = [GBIF + "gbifID", DWC + "occurrenceID", DWC + "kingdom", DWC + "phylum",
            DWC + "class", DWC + "order", DWC + "family", DWC + "genus", DWC + "specificEpithet",
            DWC + "scientificName", DWC + "taxonRank", DC + "license", DWC + "datasetName", DWC + "eventDate"]
GBIF_MEDIA = [GBIF + "gbifID", DC + "type", DC + "format", DC + "identifier", DC + "references", DC + "creator",
              DC + "license", DC + "rightsHolder"]
PUMA = ["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Puma", "concolor"]


def _meta(core: tuple, extensions: list[tuple], metadata: str = "") -> str:
    """meta.xml text. core/extension: (location, rowType, terms, attrs dict, extra field xml)."""
    def block(tag, id_tag, location, row_type, terms, attrs, extra=""):
        a = {"encoding": "UTF-8", "fieldsTerminatedBy": "\\t", "linesTerminatedBy": "\\n",
             "fieldsEnclosedBy": "", "ignoreHeaderLines": "1", **attrs}
        attr = " ".join(f'{k}="{v}"' for k, v in a.items())
        fields = "".join(f'<field index="{i}" term="{t}"/>' for i, t in enumerate(terms))
        return (f'<{tag} {attr} rowType="{row_type}"><files><location>{location}</location></files>'
                f'<{id_tag} index="0"/>{fields}{extra}</{tag}>')
    body = block("core", "id", *core) + "".join(block("extension", "coreid", *e) for e in extensions)
    meta_attr = f' metadata="{metadata}"' if metadata else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<archive xmlns="http://rs.tdwg.org/dwc/text/"{meta_attr}>{body}</archive>')


def _tsv(rows: list[list[str]], header: list[str]) -> str:
    return "\n".join("\t".join(r) for r in [[t.rsplit("/", 1)[-1] for t in header], *rows]) + "\n"


def _csv(rows: list[list[str]], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([t.rsplit("/", 1)[-1] for t in header])
    w.writerows(rows)
    return buf.getvalue()


def _write(root: Path, files: dict[str, str | bytes], as_zip: bool) -> Path:
    if as_zip:
        path = root.with_suffix(".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, text in files.items():
                z.writestr(name, text)
        return path
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def gbif_archive(root: Path, url, as_zip: bool = True) -> Path:
    """A GBIF-download-like archive; `url(i)` gives image i's URL."""
    occ = [
        ["101", "urn:occ:1", *PUMA, "Puma concolor (Linnaeus, 1771)", "SPECIES", "CC0_1_0", "Cats of the North",
         "2020-05-01"],
        ["102", "urn:occ:2", "Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Malus", "domestica",
         "Malus domestica Borkh.", "SPECIES", "CC_BY_4_0", "Orchards", ""],
        ["103", "urn:occ:3", *PUMA[:6], "", "Puma", "GENUS", "CC_BY_4_0", "no media here", ""],
        ["104", "", "Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "",
         'Amanita "fly agaric" group', "GENUS", "CC_BY_NC_4_0", "quoted", ""],
        ["105", "urn:occ:5", "Animalia", "", "", "", "", "Felis", "", "Puma concolor", "SPECIES", "CC0_1_0",
         "conflict", ""],
        ["106", "urn:occ:6", "incertae sedis", "", "", "", "", "", "", "BOLD:ACZ1234", "UNRANKED", "", "", ""],
    ]
    media = [  # deliberately not in core order, and mixed media types
        ["102", "StillImage", "image/jpeg", url(3), "https://example.org/obs/2", "B. Gardener", "", "Orchard Trust"],
        ["101", "StillImage", "image/jpeg", url(1), "https://example.org/obs/1", "A. Hunter",
         "http://creativecommons.org/licenses/by/4.0/", "A. Hunter"],
        ["101", "Sound", "audio/mpeg", "https://example.org/call.mp3", "", "", "", ""],
        ["101", "http://purl.org/dc/dcmitype/StillImage", "", url(2), "", "", "", ""],
        ["104", "", "image/png", url(4), "", "", "", ""],
        ["105", "StillImage", "image/jpeg", url(5), "", "", "", ""],
        ["106", "StillImage", "image/jpeg", url(6), "", "", "", ""],
        ["999", "StillImage", "image/jpeg", "https://example.org/orphan.jpg", "", "", "", ""],  # no such occurrence
        ["102", "StillImage", "image/jpeg", "", "", "", "", ""],  # no URL
    ]
    verbatim = [["101", "puma"], ["102", "apple"]]
    files = {
        "meta.xml": _meta(("occurrence.txt", DWC + "Occurrence", GBIF_OCC, {},
                           f'<field term="{DWC}basisOfRecord" default="HUMAN_OBSERVATION"/>'),
                          [("verbatim.txt", DWC + "Occurrence", [GBIF + "gbifID", DWC + "vernacularName"], {}),
                           ("multimedia.txt", GBIF + "Multimedia", GBIF_MEDIA, {})], metadata="metadata.xml"),
        "occurrence.txt": _tsv(occ, GBIF_OCC),
        "multimedia.txt": _tsv(media, GBIF_MEDIA),
        "verbatim.txt": _tsv(verbatim, [GBIF + "gbifID", DWC + "vernacularName"]),
        "metadata.xml": "<eml><dataset><title>GBIF Occurrence Download</title></dataset></eml>",
    }
    return _write(root, files, as_zip)


def test_gbif_download_zip(tmp_path):
    stats = DwcaStats()
    recs = list(read_dwca(gbif_archive(tmp_path / "gbif", lambda i: f"https://img.example.org/{i}.jpg"), stats=stats))
    assert [r.url for r in recs] == [f"https://img.example.org/{i}.jpg" for i in (1, 2, 3, 4, 5, 6)]
    puma1, puma2, apple, agaric, conflict, unplaced = recs
    assert puma1.source_id == puma2.source_id == "urn:occ:1"
    assert agaric.source_id == "104"  # no occurrenceID: the GBIF id
    assert puma1.taxon == Taxon(*PUMA)
    assert puma1.scientific_name == "Puma concolor (Linnaeus, 1771)"
    assert apple.taxon.species == "Malus domestica" and apple.taxon.kingdom == "Plantae"
    assert agaric.taxon.genus == "Amanita" and agaric.taxon.epithet == ""
    assert all(r.data_source == "gbif" for r in recs)
    assert puma1.license == "http://creativecommons.org/licenses/by/4.0/"  # the image's own licence
    assert puma2.license == "CC0_1_0" and apple.license == "CC_BY_4_0"  # else the occurrence's
    assert puma1.meta["rightsHolder"] == "A. Hunter" and puma1.meta["creator"] == "A. Hunter"
    assert puma1.meta["references"] == "https://example.org/obs/1"
    assert puma1.meta["datasetName"] == "Cats of the North" and puma1.meta["eventDate"] == "2020-05-01"
    assert puma1.meta["basisOfRecord"] == "HUMAN_OBSERVATION"  # a meta.xml default value
    assert puma1.meta["gbifID"] == "101"
    assert conflict.taxon.empty and "not in genus" in conflict.meta["taxonomy_error"]
    assert conflict.scientific_name == "Puma concolor"  # left for the backbone to resolve
    assert unplaced.taxon.empty and unplaced.scientific_name == "BOLD:ACZ1234"  # GBIF's "incertae sedis" is no kingdom
    assert (stats.occurrences, stats.images, stats.occurrences_without_images) == (6, 6, 1)
    assert (stats.non_image_media, stats.media_without_url, stats.taxonomy_conflicts) == (1, 1, 1)


def test_folder_and_zip_read_alike(tmp_path):
    url = lambda i: f"https://img.example.org/{i}.jpg"  # noqa: E731
    from_zip = [(r.source_id, r.url, r.taxon) for r in read_dwca(gbif_archive(tmp_path / "a", url))]
    from_dir = [(r.source_id, r.url, r.taxon) for r in read_dwca(gbif_archive(tmp_path / "b", url, as_zip=False))]
    assert from_zip == from_dir


def test_inaturalist_export_csv_quoted(tmp_path):
    occ_terms = [DC + "identifier", DWC + "occurrenceID", DWC + "scientificName", DWC + "taxonRank",
                 DWC + "kingdom", DWC + "family", DWC + "genus", DWC + "vernacularName", DC + "license",
                 DWC + "occurrenceRemarks"]
    media_terms = [DC + "identifier", DC + "type", DC + "format", DC + "identifier", DC + "rightsHolder",
                   DC + "license"]
    occ = [["7", "https://www.inaturalist.org/observations/7", "Danaus plexippus", "species", "Animalia",
            "Nymphalidae", "Danaus", "Monarch", "cc-by-nc", 'seen at "the park",\nnear the pond']]
    media = [["7", "StillImage", "image/jpeg", "https://inaturalist-open-data.example/photos/1/medium.jpg",
              "Jane Doe", "cc-by"]]
    attrs = {"fieldsTerminatedBy": ",", "fieldsEnclosedBy": "&quot;"}
    files = {
        "meta.xml": _meta(("observations.csv", DWC + "Occurrence", occ_terms, attrs),
                          [("media.csv", GBIF + "Multimedia", media_terms, attrs)], metadata="eml.xml"),
        "observations.csv": _csv(occ, occ_terms),
        "media.csv": _csv(media, media_terms),
        "eml.xml": '<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1"><dataset>'
                   "<title>iNaturalist research-grade observations</title></dataset></eml:eml>",
    }
    (rec,) = read_dwca(_write(tmp_path / "inat", files, as_zip=False))
    assert rec.source_id == "https://www.inaturalist.org/observations/7"
    assert rec.data_source == "inaturalist"
    assert rec.taxon == Taxon("Animalia", "", "", "", "Nymphalidae", "Danaus", "plexippus", "Monarch")
    assert rec.license == "cc-by" and rec.meta["rightsHolder"] == "Jane Doe"


def test_audubon_core_latin1(tmp_path):
    occ_terms = [DWC + "occurrenceID", DWC + "scientificName", DWC + "kingdom", DWC + "vernacularName"]
    media_terms = [DWC + "occurrenceID", AC + "accessURI", "http://purl.org/dc/elements/1.1/format",
                   XMP + "UsageTerms", XMP + "Owner", DC + "type"]
    occ = [["o1", "Lynx lynx", "Animalia", "Luchs Österreich"]]
    media = [["o1", "https://museum.example/lynx.jpg", "image/jpeg", "CC BY-SA 4.0", "Natural History Museum", ""],
             ["o1", "https://museum.example/lynx.mp4", "video/mp4", "", "", ""]]
    attrs = {"encoding": "ISO-8859-1"}
    files = {
        "meta.xml": _meta(("occ.txt", DWC + "Occurrence", occ_terms, attrs),
                          [("ac.txt", AC + "Multimedia", media_terms, attrs)]),
        "occ.txt": _tsv(occ, occ_terms).encode("latin-1"),
        "ac.txt": _tsv(media, media_terms).encode("latin-1"),
    }
    (rec,) = read_dwca(_write(tmp_path / "museum", files, as_zip=True), data_source="museum")
    assert rec.url == "https://museum.example/lynx.jpg"
    assert rec.taxon.species == "Lynx lynx" and rec.taxon.common == "Luchs Österreich"
    assert rec.license == "CC BY-SA 4.0" and rec.meta["rightsHolder"] == "Natural History Museum"
    assert rec.data_source == "museum"


def test_without_meta_xml_headers_name_the_terms(tmp_path):
    occ_terms = [GBIF + "gbifID", DWC + "scientificName", DWC + "kingdom", DWC + "genus"]
    files = {"occurrence.txt": _tsv([["1", "Puma concolor", "Animalia", "Puma"]], occ_terms),
             "multimedia.txt": _tsv([["1", "StillImage", "image/jpeg", "https://x.example/1.jpg", "", "", "", ""]],
                                    GBIF_MEDIA)}
    (rec,) = read_dwca(_write(tmp_path / "plain", files, as_zip=False))
    assert rec.url == "https://x.example/1.jpg" and rec.taxon.species == "Puma concolor"
    assert rec.data_source == "gbif"


def test_associated_media_without_extension(tmp_path):
    terms = [DWC + "occurrenceID", DWC + "scientificName", DWC + "associatedMedia"]
    files = {"meta.xml": _meta(("occurrence.txt", DWC + "Occurrence", terms, {}), []),
             "occurrence.txt": _tsv([["a", "Puma concolor", "https://x.example/1.jpg | https://x.example/2.jpg"],
                                     ["b", "Lynx lynx", ""]], terms)}
    recs = list(read_dwca(_write(tmp_path / "am", files, as_zip=False)))
    assert [(r.source_id, r.url) for r in recs] == [("a", "https://x.example/1.jpg"), ("a", "https://x.example/2.jpg")]


def test_core_is_streamed_not_loaded(tmp_path):
    terms = [DWC + "occurrenceID", DWC + "scientificName", DWC + "associatedMedia"]
    rows = [[f"o{i}", "Puma concolor", f"https://x.example/{i}.jpg"] for i in range(20_000)]
    files = {"meta.xml": _meta(("occurrence.txt", DWC + "Occurrence", terms, {}), []),
             "occurrence.txt": _tsv(rows, terms)}
    stats = DwcaStats()
    it = read_dwca(_write(tmp_path / "big", files, as_zip=True), stats=stats)
    next(it)
    assert stats.occurrences == 1  # the first record comes out after reading one core row
    it.close()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("not_zip", "not a Darwin Core Archive"),
    ("empty_folder", "no meta.xml and no occurrence.txt"),
    ("bad_xml", "meta.xml: not valid XML"),
    ("event_core", "only Occurrence-core archives"),
    ("missing_file", "occurrence.txt: named in the archive but missing"),
    ("no_id", "has no <coreid"),
    ("bad_encoding", "unknown encoding 'klingon'"),
    ("bad_index", "not a whole number"),
])
def test_malformed_archives_name_the_file(tmp_path, case, message):
    terms = [DWC + "occurrenceID", DWC + "scientificName"]
    good_meta = _meta(("occurrence.txt", DWC + "Occurrence", terms, {}),
                      [("multimedia.txt", GBIF + "Multimedia", GBIF_MEDIA, {})])
    root = tmp_path / "arch"
    if case == "missing":
        path = root
    elif case == "not_zip":
        path = tmp_path / "x.zip"
        path.write_text("hello")
    elif case == "empty_folder":
        path = _write(root, {}, as_zip=False)
    elif case == "bad_xml":
        path = _write(root, {"meta.xml": "<archive><core>"}, as_zip=True)
    elif case == "event_core":
        path = _write(root, {"meta.xml": _meta(("event.txt", DWC + "Event", terms, {}), [])}, as_zip=False)
    elif case == "missing_file":
        path = _write(root, {"meta.xml": good_meta, "multimedia.txt": ""}, as_zip=False)
    elif case == "no_id":
        path = _write(root, {"meta.xml": good_meta.replace('<coreid index="0"/>', ""),
                             "occurrence.txt": "", "multimedia.txt": ""}, as_zip=False)
    elif case == "bad_encoding":
        meta = _meta(("occurrence.txt", DWC + "Occurrence", terms, {"encoding": "klingon"}), [])
        path = _write(root, {"meta.xml": meta, "occurrence.txt": "id\tname\n"}, as_zip=True)
    elif case == "bad_index":
        path = _write(root, {"meta.xml": good_meta.replace('index="1"', 'index="one"')}, as_zip=False)
    with pytest.raises(InputError, match=message) as err:
        list(read_dwca(path))
    if case not in ("missing", "not_zip", "empty_folder"):
        assert str(root) in str(err.value)


def test_meta_xml_with_an_external_entity_is_refused(tmp_path):
    terms = [DWC + "occurrenceID", DWC + "scientificName"]
    meta = _meta(("occurrence.txt", DWC + "Occurrence", terms, {}), []).replace(
        "<archive ", '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><archive ', 1)
    meta = meta.replace("<location>occurrence.txt</location>", "<location>&e;</location>")
    path = _write(tmp_path / "xxe", {"meta.xml": meta, "occurrence.txt": "occurrenceID\tscientificName\n"},
                  as_zip=True)
    with pytest.raises(InputError, match="meta.xml: refused") as err:
        list(read_dwca(path))
    assert str(tmp_path / "xxe") in str(err.value) and "\n" not in str(err.value)


def test_archive_images_fetched_from_a_local_server(tmp_path, images):
    """The issue's check: 404s, slow answers, 429-then-OK and a redirect; every reachable image once."""
    pytest.importorskip("aiohttp")
    from test_data_fetch import ImageServer

    from taxoclip.data.fetch import fetch_all

    with ImageServer(images) as srv:
        routes = {1: "img", 2: "missing", 3: "slow", 4: "flaky", 5: "redirect", 6: "img"}
        archive = gbif_archive(tmp_path / "gbif", lambda i: srv.url(routes[i], i))
        records = list(read_dwca(archive))
        journal = tmp_path / "fetch.sqlite"
        got = {r.url: (data, err) for r, data, err in fetch_all(
            records, journal, concurrency=4, per_host_rate=None, timeout=1.0, backoff=0.05,
            allow_private_addresses=True)}
        assert len(got) == 6
        for i in (1, 3, 4, 5, 6):
            assert got[srv.url(routes[i], i)] == (images[i], None)
        assert got[srv.url("missing", 2)] == (None, "HTTP 404")
        assert srv.hits["/img/1.jpg"] == 1 and srv.hits["/slow/3.jpg"] == 1
        assert srv.hits["/flaky/4.jpg"] == 2 and srv.hits["/redirect/5.jpg"] == 1 and srv.hits["/img/5.jpg"] == 1
        before = srv.hits.copy()
        again = list(fetch_all(read_dwca(archive), journal, per_host_rate=None, allow_private_addresses=True))
        assert len(again) == 6 and srv.hits == before  # the re-run is served from the journal


def test_build_gets_every_reachable_image_once_and_reports_the_rest(tmp_path, images):
    """`taxoclip data build` on a served archive: 404s, slow answers, 429-then-OK, a redirect, a hang."""
    pytest.importorskip("aiohttp")
    from test_data_fetch import ImageServer

    from taxoclip.data.build import BuildConfig, BuildOptions, build
    from taxoclip.data.imaging import ImageSpec

    routes = ["img", "img", "missing", "slow", "flaky", "redirect", "hang"]
    occ_terms = [DWC + "occurrenceID", DWC + "kingdom", DWC + "genus", DWC + "specificEpithet"]
    with ImageServer(images, hang=3.0) as srv:
        occ = [[f"occ-{i}", "Animalia", "Puma", "concolor"] for i in range(len(routes))]
        media = [[f"occ-{i}", "StillImage", "image/jpeg", srv.url(r, i), "", "", "", ""] for i, r in enumerate(routes)]
        files = {"meta.xml": _meta(("occurrence.txt", DWC + "Occurrence", occ_terms, {}),
                                   [("multimedia.txt", GBIF + "Multimedia", GBIF_MEDIA, {})]),
                 "occurrence.txt": _tsv(occ, occ_terms), "multimedia.txt": _tsv(media, GBIF_MEDIA)}
        archive = _write(tmp_path / "served", files, as_zip=True)
        config = BuildConfig(image=ImageSpec(size=32, min_side=16), dedup_threshold=0, exclude_threshold=0,
                             aligned=None)
        options = BuildOptions(workers=0, progress=False, fetch=dict(
            concurrency=4, per_host_rate=None, timeout=1.0, retries=1, backoff=0.05,
            allow_private_addresses=True))
        stats = build([archive], tmp_path / "out", config=config, options=options)

    assert stats["images"] == 5
    for i, route in enumerate(routes):
        if route in ("img", "slow", "redirect"):
            assert srv.hits[f"/{route}/{i}.jpg"] == 1
    assert srv.hits["/flaky/4.jpg"] == 2 and srv.hits["/img/5.jpg"] == 1  # 429 then OK; the redirect's target
    with open(tmp_path / "out" / "errors.csv", newline="") as fh:
        errors = {row["source_id"]: row["reason"] for row in csv.DictReader(fh)}
    assert set(errors) == {"occ-2", "occ-6"}
    assert "HTTP 404" in errors["occ-2"] and "timeout after 2 attempts" in errors["occ-6"]


def test_folder_archive_cannot_point_outside_itself(tmp_path):
    """A meta.xml `<location>` of ../secret.txt is refused, not read."""
    from taxoclip.data.dwca import read_dwca
    from taxoclip.errors import InputError

    (tmp_path / "secret.txt").write_text("id\tscientificName\n1\tPanthera leo\n")
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "meta.xml").write_text(
        '<archive xmlns="http://rs.tdwg.org/dwc/text/"><core rowType="http://rs.tdwg.org/dwc/terms/Occurrence" '
        'fieldsTerminatedBy="\\t" ignoreHeaderLines="1"><files><location>../secret.txt</location></files>'
        '<id index="0"/><field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/></core></archive>')
    with pytest.raises(InputError, match="outside the archive folder"):
        list(read_dwca(folder))
