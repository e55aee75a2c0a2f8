"""The camera-trap pipeline: crops, frame answers, and detect -> classify -> files end to end."""
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


@pytest.fixture
def sd_card(tmp_path):
    """Real camera-trap frames (Camtrap DP example: a grey heron at night), a corrupt one and a blank one."""
    media = STANDARDS / "example" / "media"
    if not media.is_dir():
        pytest.skip(f"Camtrap DP example media not found at {media}")
    card = tmp_path / "DCIM" / "cam-1"
    card.mkdir(parents=True)
    for f in sorted(media.iterdir())[:4]:
        shutil.copy(f, card / f.name)
    (card / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (2048, 1440), (90, 90, 90)).save(card / "blank.jpg")
    return tmp_path / "DCIM"


def test_sd_card_to_md_json_camtrap_dp_and_dwca(sd_card, tmp_path):
    """detect -> classify -> MegaDetector JSON (its own validator and ours), Camtrap DP (frictionless,
    local schemas), Darwin Core Archive (read back); the corrupt frame is a failure, the rest go on."""
    from taxoclip.camtrap.camtrapdp import validate_camtrap_dp
    from taxoclip.camtrap.mdjson import check_md_json, read_md_json
    from taxoclip.cli import main
    from taxoclip.io.dwca import Archive

    out, dp, dwca = tmp_path / "results.json", tmp_path / "package", tmp_path / "occurrences.zip"
    code = main(["camtrap", "run", str(sd_card), "-o", str(out), "--camtrap-dp", str(dp), "--dwc", str(dwca),
                 "--detection-threshold", "0.05", "--classify-threshold", "0.05"])
    assert code == 1  # one frame could not be read
    doc = json.loads(out.read_text())
    images = {im["file"]: im for im in doc["images"]}
    assert len(images) == 6
    assert images["cam-1/corrupt.jpg"]["failure"] and images["cam-1/corrupt.jpg"]["detections"] is None
    assert images["cam-1/blank.jpg"]["prediction"] == "blank"
    assert check_md_json(out) == []
    vbr = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    result = vbr.validate_batch_results(str(out), vbr.ValidateBatchResultsOptions())["validation_results"]
    assert not result["errors"], result["errors"]
    frames, _ = read_md_json(out, images_root=sd_card)
    assert sum(f.failure is not None for f in frames) == 1
    assert validate_camtrap_dp(dp, STANDARDS) == []
    archive = Archive(dwca)
    core, _ = archive.tables()
    assert "scientificName" in {t for t, _, _ in core.fields}


def test_classify_a_megadetector_file(sd_card, tmp_path):
    """MegaDetector's boxes in, our classifications out: a heron box, a frame with no detection, a
    path missing under --images; the output validates and every readable frame is answered."""
    from taxoclip.camtrap.mdjson import check_md_json
    from taxoclip.cli import main

    md = tmp_path / "md.json"
    md.write_text(json.dumps({
        "info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [
            {"file": "cam-1/20210531082538-RCNX0031.JPG",
             "detections": [{"category": "1", "conf": 0.93, "bbox": [0.35947, 0.61382, 0.32951, 0.31225]}]},  # annotated
            {"file": "cam-1/blank.jpg", "detections": []},
            {"file": "cam-1/gone.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]}]},
        ]}))
    out = tmp_path / "classified.json"
    assert main(["camtrap", "classify", str(md), "--images", str(sd_card), "-o", str(out)]) == 1
    images = {im["file"]: im for im in json.loads(out.read_text())["images"]}
    heron = images["cam-1/20210531082538-RCNX0031.JPG"]
    assert heron["detections"][0]["classifications"], "the animal box is classified"
    assert heron["prediction"] not in ("", "blank")
    assert images["cam-1/blank.jpg"]["prediction"] == "blank"
    assert "not found" in images["cam-1/gone.jpg"]["failure"]
    assert check_md_json(out) == []


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
