"""Camera-trap exchange formats: MegaDetector batch JSON, Camtrap DP 1.0 and Darwin Core.

Written files are checked by the formats' own validators: MegaDetector's
`validate_batch_results` (megadetector-utils) and frictionless/jsonschema against the local
Camtrap DP 1.0.2 profile and table schemas in ../shared (skipped on a fresh clone).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from taxoclip.camtrap.camtrapdp import read_camtrap_dp, validate_camtrap_dp, write_camtrap_dp
from taxoclip.camtrap.dwc import TERMS, write_dwc_occurrences, write_dwca
from taxoclip.camtrap.mdjson import check_md_json, read_md_json, write_md_json
from taxoclip.camtrap.results import Answer, Classification, Detection, Frame
from taxoclip.errors import InputError

STANDARDS = Path(__file__).resolve().parents[2] / "shared" / "standards" / "camtrap-dp-1.0.2"

PUMA = ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Puma", "concolor")
LYNX = ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Lynx", "rufus")
FOX = ("Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Vulpes", "vulpes")
DETECTOR = {"name": "md_v5a.0.0.pt", "metadata": {"typical_detection_threshold": 0.2}}
CLASSIFIER = {"name": "hf-hub:imageomics/bioclip-2", "vocabulary": "tol-200m", "vocabulary_hash": "sha256:abc123"}


def _c(lineage, common, score):
    return Classification(f"{lineage[5]} {lineage[6]}", "species", lineage, common, score)


@pytest.fixture
def frames() -> list[Frame]:
    """Two deployments, a two-frame event, a blank frame, a human, a vehicle and a failure."""
    puma = Answer("Puma concolor", "species", 0.81, "model", PUMA, "puma")
    felidae = Answer("Felidae", "family", 0.96, "rollup", PUMA[:5])
    return [
        Frame("cam-A/IMG_0001.JPG", width=1920, height=1080, datetime="2024-05-01T22:10:00+02:00",
              deployment="cam-A", latitude=51.2, longitude=4.4, event="cam-A#1", answer=puma,
              detections=[Detection("animal", 0.93, (0.1, 0.2, 0.3, 0.4),
                                    [_c(PUMA, "puma", 0.81), _c(LYNX, "bobcat", 0.12), _c(FOX, "red fox", 0.01)],
                                    puma)]),
        Frame("cam-A/IMG_0002.JPG", datetime="2024-05-01T22:10:03+02:00", deployment="cam-A", latitude=51.2,
              longitude=4.4, event="cam-A#1", answer=felidae,
              detections=[Detection("animal", 0.88, (0.5, 0.5, 0.25, 0.25),
                                    [_c(LYNX, "bobcat", 0.52), _c(PUMA, "puma", 0.44)], felidae),
                          Detection("animal", 0.4, (0.0, 0.6, 0.2, 0.4), [_c(PUMA, "puma", 0.7)],
                                    Answer("Puma concolor", "species", 0.7, "model", PUMA, "puma"))]),
        Frame("cam-B/IMG_0100.JPG", datetime="2024-05-02T03:00:00", deployment="cam-B",
              answer=Answer("blank", "", 0.97, "detector"), detections=[]),
        Frame("cam-B/IMG_0101.JPG", datetime="2024-05-02T03:05:00", deployment="cam-B",
              answer=Answer("human", "", 0.9, "detector"),
              detections=[Detection("person", 0.9, (0.4, 0.1, 0.2, 0.8))]),
        Frame("cam-B/IMG_0102.JPG", datetime="2024-05-02T03:06:00", deployment="cam-B",
              answer=Answer("vehicle", "", 0.75, "detector"),
              detections=[Detection("vehicle", 0.75, (0.0, 0.3, 0.6, 0.5))]),
        Frame("cam-B/IMG_0103.JPG", datetime="2024-05-02T03:07:00", deployment="cam-B", detections=None,
              failure="cannot decode image: truncated JPEG"),
    ]


def _md_validate(path: Path) -> dict:
    vbr = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    options = vbr.ValidateBatchResultsOptions()
    return vbr.validate_batch_results(str(path), options)["validation_results"]


def _write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


# ----- MegaDetector batch JSON ----------------------------------------------------------------
def test_md_json_round_trip(tmp_path, frames):
    path = write_md_json(frames, tmp_path / "md.json", detector=DETECTOR, classifier=CLASSIFIER)
    back, meta = read_md_json(path)
    assert back == frames
    assert meta["info"]["format_version"] == "1.6"
    assert meta["info"]["classifier_metadata"]["vocabulary_hash"] == "sha256:abc123"


def test_md_json_written_is_valid_by_megadetector_and_our_checks(tmp_path, frames):
    path = write_md_json(frames, tmp_path / "md.json", detector=DETECTOR, classifier=CLASSIFIER)
    result = _md_validate(path)
    assert result["errors"] == [] and result["warnings"] == []
    assert check_md_json(path) == []


def test_md_json_layout(tmp_path, frames):
    doc = json.loads(write_md_json(frames, tmp_path / "md.json", detector=DETECTOR, classifier=CLASSIFIER,
                                   max_classifications=2).read_text())
    info = doc["info"]
    assert info["format_version"] == "1.6" and info["detector"] == "md_v5a.0.0.pt"
    assert info["detector_metadata"] == {"typical_detection_threshold": 0.2}
    assert info["classifier"] == "hf-hub:imageomics/bioclip-2"
    assert info["classifier_metadata"]["model"] == "hf-hub:imageomics/bioclip-2"
    assert info["classifier_metadata"]["vocabulary"] == "tol-200m"
    assert "classification_completion_time" in info
    assert doc["detection_categories"] == {"1": "animal", "2": "person", "3": "vehicle"}
    # ids in order of first appearance (the fox is never in a top 2); SpeciesNet-style descriptions
    assert doc["classification_categories"] == {"0": "Puma concolor", "1": "Lynx rufus"}
    assert doc["classification_category_descriptions"]["1"] == \
        "Animalia;Chordata;Mammalia;Carnivora;Felidae;Lynx;rufus;bobcat"
    first, second = doc["images"][0], doc["images"][1]
    assert first["detections"][0]["classifications"] == [["0", 0.81], ["1", 0.12]]  # top 2 of 3
    assert second["detections"][0]["classifications"] == [["1", 0.52], ["0", 0.44]]  # sorted best first
    assert (first["prediction"], first["prediction_score"], first["prediction_source"]) == ("Puma concolor", 0.81,
                                                                                             "model")
    assert doc["images"][2] == {"file": "cam-B/IMG_0100.JPG", "detections": [], "prediction": "blank",
                                "prediction_score": 0.97, "prediction_source": "detector",
                                "datetime": "2024-05-02T03:00:00", "deployment": "cam-B"}
    failed = doc["images"][5]
    assert failed["failure"].startswith("cannot decode") and failed["detections"] is None


def test_md_json_info_from_model_identities(tmp_path, frames):
    # what `taxoclip camtrap` passes: provenance records, not just names
    classifier = {"model": {"id": "bioclip-2", "weights_hash": "sha1:00ff", "logit_scale": 100.0},
                  "vocabulary": {"name": "tol-mini", "taxa": 12, "hash": "4be1"}, "temperature": float("nan"),
                  "decision": {"thresholds": {"species": 0.5}}}
    path = write_md_json(frames, tmp_path / "md.json", detector={"name": "md_v5a.0.0.pt", "metadata": None},
                         classifier=classifier)
    info = json.loads(path.read_text())["info"]
    assert info["detector"] == "md_v5a.0.0.pt" and "detector_metadata" not in info
    assert info["classifier"] == "bioclip-2"
    meta = info["classifier_metadata"]
    assert meta["model"]["weights_hash"] == "sha1:00ff" and meta["vocabulary"]["hash"] == "4be1"
    assert meta["temperature"] is None and meta["decision"] == {"thresholds": {"species": 0.5}}
    assert _md_validate(path)["errors"] == [] and check_md_json(path) == []


def test_md_json_fixed_category_ids(tmp_path, frames):
    doc = json.loads(write_md_json(frames, tmp_path / "md.json", detector=DETECTOR, classifier=CLASSIFIER,
                                   categories_from=[_c(FOX, "red fox", 0), "cat"]).read_text())
    assert doc["classification_categories"] == {"0": "Vulpes vulpes", "1": "cat", "2": "Puma concolor",
                                                "3": "Lynx rufus"}
    assert doc["classification_category_descriptions"]["1"] == ";;;;;;;"  # a custom label: no ranks


def test_md_json_detector_only(tmp_path, frames):
    bare = [Frame(f.file, detections=None if f.detections is None else
                  [Detection(d.category, d.conf, d.bbox) for d in f.detections], failure=f.failure) for f in frames]
    path = write_md_json(bare, tmp_path / "md.json", detector={"name": "md_v5a.0.0.pt"})
    doc = json.loads(path.read_text())
    assert "classification_categories" not in doc and "classifier" not in doc["info"]
    assert _md_validate(path)["errors"] == [] and check_md_json(path) == []
    assert read_md_json(path)[0] == bare


def test_read_md_json_1_1_with_max_detection_conf(tmp_path):
    path = _write_json(tmp_path / "old.json", {
        "info": {"format_version": "1.1", "detector": "megadetector_v4.1"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "classification_categories": {"1": "elk", "3": "bear"},
        "images": [
            {"file": "a/1.jpg", "max_detection_conf": 0.926, "detections": [
                {"category": "1", "conf": 0.926, "bbox": [0.0, 0.2762, 0.1539, 0.2825],
                 "classifications": [["1", 0.071], ["3", 0.901]]},
                {"category": "2", "conf": 0.061, "bbox": [0.0451, 0.1849, 0.3642, 0.4636]}]},
            {"file": "a/2.jpg", "max_detection_conf": 0.0, "detections": []},
        ]})
    frames, meta = read_md_json(path)
    assert [f.file for f in frames] == ["a/1.jpg", "a/2.jpg"]
    animal, person = frames[0].detections
    assert (animal.category, animal.conf, animal.bbox) == ("animal", 0.926, (0.0, 0.2762, 0.1539, 0.2825))
    assert [(c.name, c.rank, c.lineage, c.score) for c in animal.classifications] == [("bear", "", (), 0.901),
                                                                                      ("elk", "", (), 0.071)]
    assert person.category == "person" and person.classifications == []
    assert frames[1].detections == [] and frames[1].failure is None
    assert meta["info"]["detector"] == "megadetector_v4.1"


def test_read_md_json_1_0_vehicle_id_and_unlisted_categories(tmp_path):
    # format 1.0 (batch API v3): vehicle was "4"; "3" (group) is not listed and means "no detection"
    path = _write_json(tmp_path / "v10.json", {
        "info": {"format_version": "1.0"}, "detection_categories": {"1": "animal", "2": "person", "4": "vehicle"},
        "images": [{"file": "x.jpg", "meta": "site 3", "max_detection_conf": 0.8, "detections": [
            {"category": "4", "conf": 0.8, "bbox": [0.1, 0.1, 0.2, 0.2]},
            {"category": "3", "conf": 0.5, "bbox": [0.1, 0.1, 0.2, 0.2]}]}]})
    [frame], _ = read_md_json(path)
    assert [d.category for d in frame.detections] == ["vehicle"]


def test_read_md_json_1_6_speciesnet_descriptions(tmp_path):
    # as megadetector's SpeciesNet converter writes them: "<uuid>;class;order;family;genus;species;common"
    path = _write_json(tmp_path / "sn.json", {
        "info": {"format_version": "1.6", "detector": "converted_from_predictions_json"},
        "detection_categories": {"1": "animal", "2": "human", "3": "vehicle"},
        "classification_categories": {"0": "puma", "1": "rodent", "2": "blank"},
        "classification_category_descriptions": {
            "0": "f1aa5a6c-2b2a-4b5c-9d3b-1b2c3d4e5f60;mammalia;carnivora;felidae;puma;concolor;puma",
            "1": "90d950db-2106-4bd9-a4c1-777604c3eada;mammalia;rodentia;;;;rodent",
            "2": "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank"},
        "images": [{"file": "img.jpg", "detections": [
            {"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5],
             "classifications": [["0", 0.7], ["1", 0.2], ["2", 0.1]]},
            {"category": "2", "conf": 0.8, "bbox": [0.6, 0.1, 0.2, 0.5]}]}]})
    [frame], _ = read_md_json(path)
    puma, rodent, blank = frame.detections[0].classifications
    assert (puma.name, puma.rank, puma.lineage, puma.common_name) == \
        ("puma", "species", ("", "", "Mammalia", "Carnivora", "Felidae", "Puma", "concolor"), "puma")
    assert (rodent.rank, rodent.lineage) == ("order", ("", "", "Mammalia", "Rodentia"))
    assert (blank.rank, blank.lineage) == ("", ())
    assert frame.detections[1].category == "person"  # SpeciesNet's "human" is MegaDetector's "person"


@pytest.mark.parametrize("version, message", [
    ("1.7", "newer than"), ("2.0", "newer than"), ("v1.6", "unreadable"), ("0.9", "not one"), (None, "no info"),
])
def test_read_md_json_refuses_unknown_versions(tmp_path, version, message):
    info = {} if version is None else {"format_version": version}
    path = _write_json(tmp_path / "x.json", {"info": info, "detection_categories": {"1": "animal"}, "images": []})
    with pytest.raises(InputError, match=message) as e:
        read_md_json(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_md_json_not_json(tmp_path):
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(InputError, match="not JSON"):
        read_md_json(tmp_path / "x.json")


def test_read_md_json_bad_box_fails_only_its_frame(tmp_path):
    det = lambda bbox: {"category": "1", "conf": 0.9, "bbox": bbox}
    path = _write_json(tmp_path / "boxes.json", {
        "info": {"format_version": "1.6"}, "detection_categories": {"1": "animal"},
        "images": [{"file": "ok.jpg", "detections": [det([0.0, 0.0, 1.0000004, 1.0]),  # within tolerance
                                                     det([0.5123, 0.2, 0.4878, 0.3])]},  # MD's rounding: x+w 1.0001
                   {"file": "bad.jpg", "detections": [det([0.1, 0.1, 0.2, 0.2]), det([0.5, -0.2, 0.3, 0.3])]},
                   {"file": "pixels.jpg", "detections": [det([120, 40, 300, 200])]},
                   {"file": "corners.jpg", "detections": [det([0.5, 0.5, 0.9, 0.9])]},  # [x1, y1, x2, y2]?
                   {"file": "also-ok.jpg", "detections": []}]})
    ok, bad, pixels, corners, also = read_md_json(path)[0]
    assert ok.failure is None and ok.detections[0].bbox == (0.0, 0.0, 1.0, 1.0)
    assert ok.detections[1].bbox[0] + ok.detections[1].bbox[2] <= 1.0  # clipped to the image
    assert bad.detections is None and "detection 2" in bad.failure and "outside [0, 1]" in bad.failure
    assert pixels.detections is None and "[120, 40, 300, 200]" in pixels.failure
    assert corners.detections is None and "past the image edge" in corners.failure
    assert also.failure is None and also.detections == []


def test_read_md_json_missing_images_under_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "here.jpg").write_bytes(b"x")
    path = _write_json(tmp_path / "md.json", {
        "info": {"format_version": "1.5"}, "detection_categories": {"1": "animal"},
        "images": [{"file": "here.jpg", "detections": []}, {"file": "gone.jpg", "detections": []}]})
    here, gone = read_md_json(path, images_root=tmp_path / "imgs")[0]
    assert here.failure is None
    assert gone.failure == f"file not found under {tmp_path / 'imgs'}" and gone.detections is None


def test_read_md_json_no_detections_anywhere(tmp_path):
    path = _write_json(tmp_path / "empty.json", {
        "info": {"format_version": "1.6"}, "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [{"file": "a.jpg", "detections": []}, {"file": "b.jpg", "detections": []}]})
    frames, _ = read_md_json(path)
    assert [(f.detections, f.failure) for f in frames] == [([], None), ([], None)]


def test_check_md_json_finds_problems(tmp_path):
    path = _write_json(tmp_path / "bad.json", {
        "info": {"format_version": "1.5"}, "detection_categories": {"1": "animal"},
        "classification_categories": {"0": "fox", "1": "elk"},
        "images": [{"file": "a.jpg", "detections": [
            {"category": "1", "conf": 0.9, "bbox": [0.7, 0.1, 0.5, 0.2], "classifications": [["0", 0.2], ["1", 0.7]]},
            {"category": "5", "conf": 1, "bbox": [0.1, 0.1, 0.2]},
            {"category": "1", "conf": 0.5, "bbox": [0.1, 0.1, 0.2, 0.2], "classifications": [["9", 0.5]]}]},
            {"file": "b.jpg", "failure": "unreadable", "detections": []}]})
    problems = "\n".join(check_md_json(path))
    for expected in ("format_version is '1.5'", "x+w or y+h > 1", "not sorted", "category '5'", "conf 1 ",
                     "not four numbers", "['9', 0.5]", "non-null detections"):
        assert expected in problems


# ----- Camtrap DP -----------------------------------------------------------------------------
@pytest.fixture
def standards() -> Path:
    if not (STANDARDS / "camtrap-dp-profile.json").is_file():
        pytest.skip(f"Camtrap DP standards not found at {STANDARDS}")
    return STANDARDS


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


DEPLOYMENTS = {"cam-A": {"latitude": 51.2, "longitude": 4.4, "locationName": "river bank", "cameraModel": "Reconyx",
                         "timezone": "Europe/Brussels"}}


def test_camtrap_dp_written_is_valid(tmp_path, frames, standards):
    path = write_camtrap_dp(frames, tmp_path / "pkg", classifier="hf-hub:imageomics/bioclip-2",
                            detector="md_v5a.0.0.pt", deployments=DEPLOYMENTS,
                            project={"title": "Test survey", "samplingDesign": "targeted"})
    assert path == tmp_path / "pkg" / "datapackage.json"
    assert validate_camtrap_dp(tmp_path / "pkg", standards) == []


def test_camtrap_dp_contents(tmp_path, frames):
    write_camtrap_dp(frames, tmp_path / "pkg", classifier="bioclip-2", detector="md_v5a", deployments=DEPLOYMENTS,
                     classified_at="2024-06-01T12:00:00Z")
    pkg = json.loads((tmp_path / "pkg" / "datapackage.json").read_text())
    assert pkg["profile"] == "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/camtrap-dp-profile.json"
    assert [r["schema"] for r in pkg["resources"]] == [
        f"https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/{t}-table-schema.json"
        for t in ("deployments", "media", "observations")]
    assert pkg["project"]["observationLevel"] == ["media", "event"]
    assert pkg["spatial"] == {"type": "Point", "coordinates": [4.4, 51.2]}  # cam-B's location is unknown
    assert pkg["temporal"] == {"start": "2024-05-01", "end": "2024-05-02"}
    assert {t["scientificName"]: t["taxonRank"] for t in pkg["taxonomic"]} == {"Puma concolor": "species",
                                                                              "Felidae": "family"}
    puma = next(t for t in pkg["taxonomic"] if t["scientificName"] == "Puma concolor")
    assert puma["family"] == "Felidae" and puma["vernacularNames"] == {"eng": "puma"}

    deps = {r["deploymentID"]: r for r in _rows(tmp_path / "pkg" / "deployments.csv")}
    assert deps["cam-A"]["latitude"] == "51.2" and deps["cam-A"]["cameraModel"] == "Reconyx"
    assert deps["cam-A"]["deploymentStart"] == "2024-05-01T22:10:00+02:00"
    assert (deps["cam-B"]["latitude"], deps["cam-B"]["locationName"]) == ("0.0", "unknown location")
    assert "placeholders" in deps["cam-B"]["deploymentComments"] and deps["cam-B"]["timestampIssues"] == "true"

    media = _rows(tmp_path / "pkg" / "media.csv")
    assert len(media) == 6 and len({m["mediaID"] for m in media}) == 6
    assert media[2]["timestamp"] == "2024-05-02T03:00:00Z"  # no offset known: written as UTC
    assert all(m["filePath"].startswith("file://") and m["filePublic"] == "false" for m in media)

    obs = _rows(tmp_path / "pkg" / "observations.csv")
    level = lambda lv: [o for o in obs if o["observationLevel"] == lv]
    got = [(o["observationType"], o["scientificName"], o["classifiedBy"]) for o in level("media")]
    assert got == [("animal", "Puma concolor", "bioclip-2"), ("animal", "Felidae", "bioclip-2"),
                   ("animal", "Puma concolor", "bioclip-2"), ("blank", "", "md_v5a"), ("human", "", "md_v5a"),
                   ("vehicle", "", "md_v5a"), ("unclassified", "", "")]
    first = level("media")[0]
    assert (first["bboxX"], first["bboxY"], first["bboxWidth"], first["bboxHeight"]) == ("0.1", "0.2", "0.3", "0.4")
    assert (first["classificationMethod"], first["classificationProbability"], first["classificationTimestamp"]) == \
        ("machine", "0.81", "2024-06-01T12:00:00Z")
    assert first["eventID"] == "cam-A#1" and first["observationID"].endswith("_1")
    assert level("media")[-1]["observationComments"].startswith("cannot decode")
    events = level("event")
    # the event's frames were decided Puma concolor and Felidae: one animal kind, two at once
    assert [(o["eventID"], o["scientificName"], o["count"]) for o in events] == [("cam-A#1", "Puma concolor", "2")]
    assert (events[0]["eventStart"], events[0]["eventEnd"], events[0]["mediaID"]) == \
        ("2024-05-01T22:10:00+02:00", "2024-05-01T22:10:03+02:00", "")


def test_camtrap_dp_media_inside_the_package_and_missing_times(tmp_path, frames, standards):
    out = tmp_path / "pkg"
    for f in frames:
        f.file = str(out / "media" / f.file)
    frames.append(Frame(str(out / "media" / "no-time.jpg"), detections=[]))
    with pytest.raises(InputError, match="1 frame"):
        write_camtrap_dp(frames, out, classifier="bioclip-2")
    write_camtrap_dp(frames, out, classifier="bioclip-2", missing_time="skip")
    media = _rows(out / "media.csv")
    assert len(media) == 6 and media[0]["filePath"] == "media/cam-A/IMG_0001.JPG"
    assert validate_camtrap_dp(out, standards) == []
    back, obs = read_camtrap_dp(out)
    assert [f.file for f in back] == [f.file for f in frames[:6]]
    assert back[0].deployment == "cam-A" and back[0].event == "cam-A#1" and back[0].latitude == 51.2
    assert back[2].latitude == 0.0  # the documented placeholder
    assert set(obs["file"][obs["observationLevel"] == "media"]) == {f.file for f in frames[:6]}


def test_camtrap_dp_local_times_take_the_deployment_timezone(tmp_path):
    frames = [Frame("a.jpg", datetime="2024:07:01 12:00:00", deployment="d1", detections=[]),  # EXIF style
              Frame("b.jpg", datetime="2024-01-01T12:00:00", deployment="d1", detections=[])]
    write_camtrap_dp(frames, tmp_path / "pkg", classifier="m", deployments={"d1": {"timezone": "Europe/Brussels"}})
    assert [m["timestamp"] for m in _rows(tmp_path / "pkg" / "media.csv")] == ["2024-07-01T12:00:00+02:00",
                                                                              "2024-01-01T12:00:00+01:00"]
    [dep] = _rows(tmp_path / "pkg" / "deployments.csv")
    assert dep["timestampIssues"] == "" and "UTC" not in dep["deploymentComments"]
    with pytest.raises(InputError, match="unknown deployment fields colour"):
        write_camtrap_dp(frames, tmp_path / "pkg", classifier="m", deployments={"d1": {"colour": "red"}})


def test_validate_camtrap_dp_reports_problems(tmp_path, frames, standards):
    out = tmp_path / "pkg"
    write_camtrap_dp(frames, out, classifier="bioclip-2", deployments=DEPLOYMENTS)
    text = (out / "observations.csv").read_text().replace(",vehicle,", ",car,")
    (out / "observations.csv").write_text(text)
    media = (out / "media.csv").read_text().replace(",cam-A,", ",cam-Z,", 1)
    (out / "media.csv").write_text(media)
    pkg = json.loads((out / "datapackage.json").read_text())
    del pkg["project"]["samplingDesign"]
    (out / "datapackage.json").write_text(json.dumps(pkg))
    problems = "\n".join(validate_camtrap_dp(out, standards))
    assert "'samplingDesign' is a required property" in problems
    assert "observationType" in problems and "constraint-error" in problems
    assert "foreign-key" in problems and "cam-Z" in problems


def test_validate_official_example(standards):
    assert validate_camtrap_dp(standards / "example", standards) == []


def test_read_official_example(standards):
    frames, obs = read_camtrap_dp(standards / "example")
    assert len(frames) == 423
    local = [f for f in frames if Path(f.file).is_file()]
    assert len(local) == 10 and all(Path(f.file).parent == standards / "example" / "media" for f in local)
    assert {f.deployment for f in local} == {"62c200a9"}
    assert local[0].datetime == "2021-04-11T20:43:09+01:00" and local[0].event == "7245a2aa"
    assert (local[0].latitude, local[0].longitude) == (50.699, 4.013)
    labels = obs[obs["file"].isin([f.file for f in local])]
    assert len(labels) == 10 and set(labels["scientificName"]) == {"Ardea"}
    assert set(labels["classificationMethod"]) == {"machine"} and labels["bboxX"].notna().all()
    first = labels.iloc[0]
    assert first["mediaID"] == "7ab33b3a" and math.isclose(first["bboxWidth"], 0.32951)
    assert math.isclose(first["classificationProbability"], 0.89)
    assert set(obs["observationLevel"]) == {"media", "event"} and len(obs) == 549


# ----- Darwin Core ----------------------------------------------------------------------------
def test_dwc_occurrences_csv(tmp_path, frames):
    path = write_dwc_occurrences(frames, tmp_path / "occ.csv", model="bioclip-2", vocabulary="tol-200m")
    rows = _rows(path)
    assert list(rows[0]) == TERMS
    # one occurrence for the event (Felidae in one frame is the Puma of the other);
    # blank, human, vehicle and the failure are not occurrences
    [puma] = rows
    assert (puma["scientificName"], puma["taxonRank"], puma["genus"], puma["specificEpithet"]) == \
        ("Puma concolor", "species", "Puma", "concolor")
    assert puma["kingdom"] == "Animalia" and puma["class"] == "Mammalia" and puma["vernacularName"] == "puma"
    assert puma["basisOfRecord"] == "MachineObservation" and puma["identifiedBy"] == "bioclip-2"
    assert "bioclip-2" in puma["identificationRemarks"] and "0.8100" in puma["identificationRemarks"]
    assert puma["individualCount"] == "2" and puma["eventID"] == "cam-A#1" and puma["parentEventID"] == "cam-A"
    assert puma["eventDate"] == "2024-05-01T22:10:00+02:00/2024-05-01T22:10:03+02:00"
    assert (puma["decimalLatitude"], puma["decimalLongitude"], puma["geodeticDatum"]) == ("51.2", "4.4", "EPSG:4326")
    assert puma["associatedMedia"] == "cam-A/IMG_0001.JPG | cam-A/IMG_0002.JPG"
    again = _rows(write_dwc_occurrences(frames, tmp_path / "again.csv", model="bioclip-2", vocabulary="tol-200m"))
    assert [r["occurrenceID"] for r in again] == [r["occurrenceID"] for r in rows]  # stable ids


def test_dwc_one_occurrence_per_frame_without_events(tmp_path, frames):
    for f in frames:
        f.event = None
    rows = _rows(write_dwc_occurrences(frames, tmp_path / "occ.csv", model="m", vocabulary="v"))
    assert [(r["associatedMedia"], r["scientificName"]) for r in rows] == [("cam-A/IMG_0001.JPG", "Puma concolor"),
                                                                           ("cam-A/IMG_0002.JPG", "Felidae")]
    assert rows[0]["eventDate"] == "2024-05-01T22:10:00+02:00"


def test_dwca_reads_back_with_the_project_reader(tmp_path, frames):
    from taxoclip.io.dwca import Archive

    path = write_dwca(frames, tmp_path / "occ.zip", model="bioclip-2", vocabulary="tol-200m",
                      title="Cam survey 2024")
    with Archive(path) as archive:
        core, media = archive.tables()
        assert core.row_type == "http://rs.tdwg.org/dwc/terms/Occurrence" and media is None
        assert [f[0] for f in core.fields] == TERMS
        rows = list(core.rows(archive))
        assert archive.title() == "Cam survey 2024"
    assert [r["scientificName"] for r in rows] == ["Puma concolor"]
    assert rows[0]["\0id"] == rows[0]["occurrenceID"] and rows[0]["taxonRank"] == "species"
    assert rows[0]["basisOfRecord"] == "MachineObservation" and rows[0]["vernacularName"] == "puma"
    assert rows[0]["family"] == "Felidae" and rows[0]["individualCount"] == "2"
    with pytest.raises(InputError, match="zip"):
        write_dwca(frames, tmp_path / "occ.txt", model="m", vocabulary="v")


def test_dwc_animals_without_a_taxon_and_custom_labels(tmp_path):
    frames = [Frame("x.jpg", answer=Answer("animal", "", 0.6, "detector"),
                    detections=[Detection("animal", 0.6, (0.1, 0.1, 0.2, 0.2))]),
              Frame("y.jpg", answer=Answer("my-cat-tom", "", 0.9, "model"),  # a custom label: not a taxon
                    detections=[Detection("animal", 0.9, (0.1, 0.1, 0.2, 0.2))]),
              Frame("z.jpg", detections=[Detection("animal", 0.9, (0.1, 0.1, 0.2, 0.2), [_c(FOX, "red fox", 0.9)],
                                                   Answer("Vulpes", "genus", 0.95, "rollup"))])]  # no frame answer
    rows = _rows(write_dwc_occurrences(frames, tmp_path / "occ.csv", model="m", vocabulary="v"))
    assert [(r["associatedMedia"], r["scientificName"], r["taxonRank"]) for r in rows] == [
        ("x.jpg", "Animalia", "kingdom"), ("z.jpg", "Vulpes", "genus")]
    assert rows[1]["family"] == "Canidae" and rows[1]["specificEpithet"] == "" and rows[1]["vernacularName"] == ""
