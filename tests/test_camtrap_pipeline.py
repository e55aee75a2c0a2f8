"""The camera-trap pipeline: crops, frame answers, and detect -> classify -> files end to end."""
import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from taxoclip.camtrap import Answer, CropOptions, Detection, Frame, frame_answer
from taxoclip.camtrap.pipeline import crop_box


def test_square_crop_with_padding_stays_inside_the_frame():
    img = Image.new("RGB", (200, 100))
    # a 40x20 px box centred at (100, 50): square side 40, padded by 5 % of it on each side
    crop = crop_box(img, (0.4, 0.4, 0.2, 0.2), CropOptions(padding=0.05))
    assert crop.size == (44, 44)
    # 8x40 px at the right edge: squared to 40x40 around its centre (196, 20), clipped at x = 200
    assert crop_box(img, (0.96, 0.0, 0.04, 0.4), CropOptions(padding=0.0)).size == (24, 40)
    assert crop_box(img, (0.5, 0.5, 0.01, 0.01), CropOptions(min_size=16)) is None  # 2 px: too small


def det(category, conf, answer=None):
    return Detection(category, conf, (0.1, 0.1, 0.2, 0.2), answer=answer)


def test_frame_answers_like_speciesnets_ensemble():
    t = 0.2
    assert frame_answer(Frame("a.jpg", [det("animal", 0.1)]), t).label == "blank"
    assert frame_answer(Frame("a.jpg", []), t).label == "blank"
    assert frame_answer(Frame("a.jpg", [det("person", 0.9), det("animal", 0.5)]), t).label == "human"
    assert frame_answer(Frame("a.jpg", [det("vehicle", 0.8)]), t).label == "vehicle"
    unsure = Answer("animal", "", math.nan, "none")
    assert frame_answer(Frame("a.jpg", [det("animal", 0.7, unsure)]), t).label == "animal"
    genus = Answer("Vanessa", "genus", 0.9, "rollup")
    species = Answer("Vanessa cardui", "species", 0.7, "model")
    a = frame_answer(Frame("a.jpg", [det("animal", 0.9, genus), det("animal", 0.3, species)]), t)
    assert (a.label, a.rank, a.source) == ("Vanessa cardui", "species", "model")  # the deepest box wins
    failed = Frame("a.jpg", None, failure="cannot read file")
    assert frame_answer(failed, t).label == ""


STANDARDS = Path(__file__).resolve().parents[2] / "shared" / "standards" / "camtrap-dp-1.0.2"
HERON = "cam-1/20210531082538-RCNX0031.JPG"  # wings open; annotated box [0.35947, 0.61382, 0.32951, 0.31225]


@pytest.fixture
def sd_card(tmp_path):
    """Real camera-trap frames (Camtrap DP example: a grey heron at night), a corrupt one and a blank
    one (the part of a frame above and left of the heron, where the annotator boxed nothing)."""
    media = STANDARDS / "example" / "media"
    if not media.is_dir():
        pytest.skip(f"Camtrap DP example media not found at {media}")
    card = tmp_path / "DCIM" / "cam-1"
    card.mkdir(parents=True)
    for f in sorted(media.iterdir())[:4]:
        shutil.copy(f, card / f.name)
    (card / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = Image.open(media / "20210531082540-RCNX0039.JPG").crop((0, 0, 700, 870))  # heron at x > 0.35, y > 0.61
    empty.resize((2048, 1440)).save(card / "blank.jpg")
    return tmp_path / "DCIM"


def test_sd_card_to_md_json_camtrap_dp_and_dwca(sd_card, tmp_path):
    """detect -> classify -> MegaDetector JSON (its own validator and ours), Camtrap DP (frictionless,
    local schemas), Darwin Core Archive (read back); the corrupt frame is a failure, the rest go on."""
    from taxoclip.camtrap.camtrapdp import validate_camtrap_dp
    from taxoclip.camtrap.mdjson import check_md_json, read_md_json
    from taxoclip.cli import main
    from taxoclip.io.dwca import Archive

    synthetic = sd_card / "cam-2"  # a night misfire, and a heron frame stored as a greyscale PNG
    synthetic.mkdir()
    Image.new("RGB", (2048, 1440)).save(synthetic / "misfire.jpg")
    twin = "cam-1/20210531082539-RCNX0034.JPG"  # its heron scores well above the threshold (docs/camtrap.md)
    Image.open(sd_card / twin).convert("L").save(synthetic / "heron-grey.png")
    out, dp, dwca = tmp_path / "results.json", tmp_path / "package", tmp_path / "occurrences.zip"
    code = main(["camtrap", "run", str(sd_card), "-o", str(out), "--camtrap-dp", str(dp), "--dwc", str(dwca)])
    assert code == 1  # one frame could not be read
    doc = json.loads(out.read_text())
    images = {im["file"]: im for im in doc["images"]}
    assert len(images) == 8
    assert images["cam-2/misfire.jpg"]["prediction"] == "blank"
    assert images["cam-2/heron-grey.png"]["prediction"] == images[twin]["prediction"] != "blank"
    assert images["cam-1/corrupt.jpg"]["failure"] and images["cam-1/corrupt.jpg"]["detections"] is None
    assert images["cam-1/blank.jpg"]["prediction"] == "blank"
    herons = [im for name, im in images.items() if "RCNX" in name and name.startswith("cam-1/")]
    assert sum(im["prediction"] != "blank" for im in herons) >= 2  # with the default thresholds, found
    typical = doc["info"]["detector_metadata"]["typical_detection_threshold"]
    for im in herons:  # the frame's answer counts the boxes at the typical threshold, lower ones are kept
        top = max((d["conf"] for d in im["detections"]), default=0)
        assert (im["prediction"] == "blank") == (top < typical)
        assert all(d.get("classifications") for d in im["detections"] if d["conf"] >= typical)
    assert check_md_json(out) == []
    vbr = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    result = vbr.validate_batch_results(str(out), vbr.ValidateBatchResultsOptions())["validation_results"]
    assert not result["errors"], result["errors"]
    frames, _ = read_md_json(out, images_root=sd_card)
    assert sum(f.failure is not None for f in frames) == 1
    assert validate_camtrap_dp(dp, STANDARDS) == []
    with Archive(dwca) as archive:
        core, _ = archive.tables()
        rows = list(core.rows(archive))
    animals = {name: im for name, im in images.items() if im.get("prediction") not in (None, "", "blank")}
    assert animals and sorted(r["associatedMedia"] for r in rows) == sorted(animals)  # an occurrence per animal frame
    for r in rows:
        answer = animals[r["associatedMedia"]]["prediction"]
        assert r["scientificName"] == ("Animalia" if answer == "animal" else answer)
        assert r["basisOfRecord"] == "MachineObservation" and r["identifiedBy"].startswith("taxoclip-mini")


def test_classify_a_megadetector_file(sd_card, tmp_path, capsys):
    """MegaDetector's boxes in, our classifications out. Bad entries fail their own frame only: a box
    outside [0, 1], a path missing under --images, a corrupt frame; a frame with no detection is
    blank; the output validates and every other frame is answered."""
    from taxoclip.cli import main

    md = tmp_path / "md.json"
    animal = [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]}]
    md.write_text(json.dumps({
        "info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [
            {"file": "cam-1/20210531082538-RCNX0031.JPG",
             "detections": [{"category": "1", "conf": 0.93, "bbox": [0.35947, 0.61382, 0.32951, 0.31225]}]},  # annotated
            {"file": "cam-1/20210531082538-RCNX0032.JPG",
             "detections": [{"category": "1", "conf": 0.9, "bbox": [0.48, 0.61, 0.3, 1.2]}]},  # outside [0, 1]
            {"file": "cam-1/blank.jpg", "detections": []},
            {"file": "cam-1/gone.jpg", "detections": animal},
            {"file": "cam-1/corrupt.jpg", "detections": animal},
        ]}))
    out = tmp_path / "classified.json"
    assert main(["camtrap", "classify", str(md), "--images", str(sd_card), "-o", str(out)]) == 1
    images = {im["file"]: im for im in json.loads(out.read_text())["images"]}
    heron = images["cam-1/20210531082538-RCNX0031.JPG"]
    assert heron["detections"][0]["classifications"], "the animal box is classified"
    assert heron["prediction"] not in ("", "blank")
    assert images["cam-1/blank.jpg"]["prediction"] == "blank"
    assert "outside [0, 1]" in images["cam-1/20210531082538-RCNX0032.JPG"]["failure"]
    assert "not found" in images["cam-1/gone.jpg"]["failure"]
    assert "cannot decode" in images["cam-1/corrupt.jpg"]["failure"]
    assert all(images[f]["detections"] is None for f in ("cam-1/gone.jpg", "cam-1/corrupt.jpg"))
    _valid_md(out)
    assert "cam-1/corrupt.jpg" in capsys.readouterr().err  # each failure named on the terminal too

    md.write_text(json.dumps({"info": {"format_version": "1.6"}, "detection_categories": {"1": "animal"},
                              "images": [{"file": "cam-1/blank.jpg", "detections": []},
                                         {"file": "cam-1/20210531082538-RCNX0031.JPG", "detections": []}]}))
    assert main(["camtrap", "classify", str(md), "--images", str(sd_card), "-o", str(out)]) == 0
    assert {im["prediction"] for im in json.loads(out.read_text())["images"]} == {"blank"}  # zero detections
    _valid_md(out)
    capsys.readouterr()

    md.write_text(json.dumps({"info": {"format_version": "2.0"}, "detection_categories": {"1": "animal"},
                              "images": []}))
    assert main(["camtrap", "classify", str(md), "--images", str(sd_card), "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(md) in err[0] and "version 2.0" in err[0]  # one line: the file and why
    assert not (tmp_path / "x.json").exists()


def test_camtrap_dp_package_as_input(tmp_path):
    """A package's local media are run with the times and deployments of its media table."""
    example = STANDARDS / "example"
    if not (example / "datapackage.json").is_file():
        pytest.skip(f"Camtrap DP example not found at {example}")
    from taxoclip.cli import main

    out = tmp_path / "results.json"
    assert main(["camtrap", "run", str(example), "-o", str(out), "--detection-threshold", "0.05"]) == 0
    images = json.loads(out.read_text())["images"]
    assert len(images) == 10  # the media with a local file; the 413 URLs are not fetched
    first = next(im for im in images if im["file"].endswith("RCNX0031.JPG"))
    assert (first["datetime"], first["deployment"]) == ("2021-04-11T20:43:09+01:00", "62c200a9")


# ----- what each box is classified over: custom labels, a subset, prototypes ------------------


def _annotated_boxes() -> dict[str, list[float]]:
    """The example's media-level animal boxes by file name (the human annotation), for media/'s frames."""
    example = STANDARDS / "example"
    media = {r["mediaID"]: r["fileName"] for r in csv.DictReader(open(example / "media.csv", newline=""))}
    return {media[r["mediaID"]]: [float(r[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")]
            for r in csv.DictReader(open(example / "observations.csv", newline=""))
            if r["observationLevel"] == "media" and r["bboxX"]
            and (example / "media" / media.get(r["mediaID"], "?")).is_file()}


def _md_of_annotations(sd_card, tmp_path) -> Path:
    """A MegaDetector file holding the human boxes of the frames on the card (as if MD had found them)."""
    boxes = _annotated_boxes()
    images = [{"file": f"cam-1/{p.name}", "detections": [{"category": "1", "conf": 0.9, "bbox": boxes[p.name]}]}
              for p in sorted((sd_card / "cam-1").iterdir()) if p.name in boxes]
    md = tmp_path / "md.json"
    md.write_text(json.dumps({"info": {"format_version": "1.5", "detector": "md_v5a.0.0.pt"},
                              "detection_categories": {"1": "animal"}, "images": images}))
    return md


def _valid_md(path):
    from taxoclip.camtrap.mdjson import check_md_json

    assert check_md_json(path) == []
    vbr = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    result = vbr.validate_batch_results(str(path), vbr.ValidateBatchResultsOptions())["validation_results"]
    assert not result["errors"], result["errors"]


def test_custom_labels_classify_every_box(sd_card, tmp_path):
    """--cls: every box carries all the labels with their probabilities and is answered by the best
    one when it is sure enough; the frames of one burst form an event; the files stay valid."""
    from taxoclip.camtrap.camtrapdp import validate_camtrap_dp
    from taxoclip.cli import main

    md, out, dp = _md_of_annotations(sd_card, tmp_path), tmp_path / "labels.json", tmp_path / "package"
    labels = "grey heron,red fox,wild boar,roe deer"
    assert main(["camtrap", "classify", str(md), "--images", str(sd_card), "-o", str(out), "--cls", labels,
                 "--events", "--camtrap-dp", str(dp)]) == 0
    doc = json.loads(out.read_text())
    assert sorted(doc["classification_categories"].values()) == sorted(labels.split(","))
    images = {im["file"]: im for im in doc["images"]}
    assert len(images) == 4
    for im in images.values():
        scores = [s for _, s in im["detections"][0]["classifications"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1, abs=1e-3)  # every label, so all the probability
    # one burst of one camera, seconds apart: one event, decided once for all its frames
    assert len({im["event"] for im in images.values()}) == 1
    assert len({im["prediction"] for im in images.values()}) == 1
    assert images[HERON]["prediction"] in labels.split(",") + ["animal"]
    _valid_md(out)
    assert validate_camtrap_dp(dp, STANDARDS) == []
    with open(dp / "observations.csv", newline="") as f:
        tags = {r["observationTags"] for r in csv.DictReader(f) if r["observationLevel"] == "media"}
    assert "label:grey heron" in tags


def test_custom_labels_answer_only_when_sure(sd_card, tmp_path):
    """A box is answered by its best label (or bin) when that reaches the threshold, else it stays
    `animal`; labels have no taxa, so a location prior is refused."""
    from taxoclip.camtrap import classify_md
    from taxoclip.classify import CustomLabelsBinningClassifier, CustomLabelsClassifier
    from taxoclip.decide import Policy, Thresholds
    from taxoclip.errors import InputError

    clf = CustomLabelsClassifier(["grey heron", "red fox", "wild boar"])
    md = _md_of_annotations(sd_card, tmp_path)
    for threshold in (0.5, 0.9, 1.0):
        frames, _ = classify_md(str(md), str(sd_card), clf, policy=Policy(Thresholds.parse(str(threshold))))
        for f in frames:
            best = f.detections[0].classifications[0]
            assert best.name in clf.classes and best.rank == "" and best.lineage == ()
            want = best.name if best.score >= threshold else "animal"
            assert (f.answer.label, f.detections[0].answer.label) == (want, want)
    assert {f.answer.label for f in frames} == {"animal"}  # at 1.0 no label is ever sure

    bins = CustomLabelsBinningClassifier({"grey heron": "bird", "mallard": "bird", "red fox": "mammal"},
                                         model=clf.model)
    frames, _ = classify_md(str(md), str(sd_card), bins)
    for f in frames:  # each box scored per bin: the sum of its labels' probabilities
        scores = {c.name: c.score for c in f.detections[0].classifications}
        assert set(scores) == {"bird", "mammal"} and sum(scores.values()) == pytest.approx(1, abs=1e-3)
        assert f.answer.label in ("bird", "mammal", "animal")
    with pytest.raises(InputError, match="location prior needs a Tree-of-Life vocabulary"):
        classify_md(str(md), str(sd_card), clf, policy=Policy(prior=object()))


def test_subset_limits_every_box_to_its_taxa(sd_card, tmp_path):
    from taxoclip.cli import main

    subset = tmp_path / "birds.csv"
    subset.write_text("order\nPelecaniformes\nAnseriformes\n")
    out = tmp_path / "subset.json"
    assert main(["camtrap", "classify", str(_md_of_annotations(sd_card, tmp_path)), "--images", str(sd_card),
                 "-o", str(out), "--subset", str(subset)]) == 0
    doc = json.loads(out.read_text())
    lineages = [d.split(";")[:7] for d in doc["classification_category_descriptions"].values()]
    assert lineages and {x[3] for x in lineages} <= {"Pelecaniformes", "Anseriformes"}
    for im in doc["images"]:  # each answer is one of those taxa or a group above them (Aves, …)
        answer = [x for x in im["prediction_description"].split(";")[:7] if x]
        assert im["prediction_score"] <= 1 and any(x[:len(answer)] == answer for x in lineages)
    assert doc["info"]["classifier_metadata"]["vocabulary"]["name"].endswith("]")  # named as a subset
    _valid_md(out)


@pytest.mark.parametrize("heron, reeds", [("Ardea cinerea", "Phragmites australis"), ("heron", "reeds")])
def test_prototypes_from_my_own_photos(sd_card, tmp_path, heron, reeds):
    """Prototypes built from crops of other frames of the night (class folders), then the boxes on
    the card classified over them: a binomial folder name takes its taxonomy from the model's
    vocabulary; classes named by a common name alone are answered like custom labels."""
    from taxoclip.camtrap import classify_md
    from taxoclip.camtrap.mdjson import write_md_json
    from taxoclip.classify import TreeOfLifeClassifier
    from taxoclip.evaluate.prototypes import build_prototypes
    from taxoclip.models import load_model

    boxes, media = _annotated_boxes(), STANDARDS / "example" / "media"
    on_card = {p.name for p in (sd_card / "cam-1").iterdir()}
    photos = tmp_path / "my-photos"
    for cls in (heron, reeds):
        (photos / cls).mkdir(parents=True)
    for name in sorted(set(boxes) - on_card)[:4]:  # support frames the card does not hold
        im = Image.open(media / name)
        W, H = im.size
        x, y, w, h = boxes[name]
        im.crop((int(x * W), int(y * H), int((x + w) * W), int((y + h) * H))).save(photos / heron / name)
        im.crop((int(0.55 * W), int(0.1 * H), int(0.8 * W), int(0.4 * H))).save(photos / reeds / name)
    model = load_model("taxoclip-mini", precision="fp32")
    vocabulary, _ = build_prototypes(model, photos, tmp_path / "protos")
    clf = TreeOfLifeClassifier(model, vocabulary=vocabulary)
    frames, _ = classify_md(str(_md_of_annotations(sd_card, tmp_path)), str(sd_card), clf)
    for f in frames:
        best = f.detections[0].classifications[0]
        assert best.name == heron and f.answer.label == heron
        if heron == "Ardea cinerea":
            assert {"Aves", "Ardeidae"} <= set(best.lineage) and f.answer.rank == "species"
        else:
            assert best.lineage == () and f.answer.source == "model"
    out = tmp_path / "protos.json"
    write_md_json(frames, out, detector={"name": "md_v5a.0.0.pt"}, classifier={"name": "taxoclip-mini"})
    _valid_md(out)
