"""The camera-trap pipeline: crops, frame answers, and detect -> classify -> files end to end."""
import json
import math

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
