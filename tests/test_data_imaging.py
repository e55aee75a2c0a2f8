"""Image processing, fingerprints and splits: the per-image rules of a build."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from data_helpers import jpeg, photo
from taxoclip.data.hashing import HammingIndex, content_hash, hamming, pdq_hash
from taxoclip.data.imaging import ImageSpec, Rejected, decode, encode_jpeg
from taxoclip.data.splits import SplitRule, parse_splits
from taxoclip.errors import InputError


def out_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_squash_and_shorter_side_resizing():
    img = photo(1, (300, 200))
    assert out_size(encode_jpeg(img, ImageSpec(size=224))) == (224, 224)
    assert out_size(encode_jpeg(img, ImageSpec(size=100, resize="shorter-side"))) == (150, 100)


def test_min_side_uses_the_original_size_even_when_draft_decoding():
    big = jpeg(photo(2, (1000, 700)))
    img, size = decode(big, ImageSpec(size=224, min_side=224))
    assert size == (1000, 700) and min(img.size) >= 224  # draft decoding kept enough pixels
    with pytest.raises(Rejected, match="too small: 1000x700"):
        decode(big, ImageSpec(size=224, min_side=800))


def test_exif_orientation_and_modes_become_upright_rgb():
    img = photo(3, (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    upright, _ = decode(buf.getvalue(), ImageSpec(min_side=1))
    assert upright.size == (40, 60) and upright.mode == "RGB"
    buf = io.BytesIO()
    img.convert("P").save(buf, "PNG")
    assert decode(buf.getvalue(), ImageSpec(min_side=1))[0].mode == "RGB"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello, I am text", "not an image"),
    (jpeg(photo(4))[:300], "cannot decode"),
])
def test_unusable_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected, match=reason):
        decode(data, ImageSpec(min_side=1))


def test_bad_specs_are_user_errors():
    with pytest.raises(InputError):
        ImageSpec(resize="stretch")
    with pytest.raises(InputError):
        ImageSpec(quality=0)


def test_pdq_is_stable_under_resizing_and_reencoding_but_tells_photos_apart():
    a = photo(5, (96, 72))
    near = Image.open(io.BytesIO(jpeg(a.resize((192, 144)), quality=85)))
    h, q = pdq_hash(a)
    assert len(h) == 32 and 0 <= q <= 100
    assert hamming(h, pdq_hash(near)[0]) < 10
    assert min(hamming(h, pdq_hash(photo(s, (96, 72)))[0]) for s in range(100, 120)) > 60
    assert content_hash(b"abc") == "900150983cd24fb0d6963f7d28e17f72"  # MD5 test vector (RFC 1321)


@pytest.mark.parametrize("threshold", [3, 10])
def test_hamming_index_finds_exactly_what_brute_force_finds(threshold):
    rng = random.Random(threshold)
    base = [rng.getrandbits(256) for _ in range(200)]
    stored = []
    index = HammingIndex(threshold=threshold)
    for b in base:
        for flips in (0, threshold // 2, threshold - 1, threshold, 30):
            v = b
            for bit in rng.sample(range(256), flips):
                v ^= 1 << bit
            stored.append(v)
    kept = stored[::2]
    for i, v in enumerate(kept):
        index.add(i, v.to_bytes(32, "big"))
    for q in stored[1::2] + [rng.getrandbits(256) for _ in range(50)]:
        dists = [(bin(q ^ k).count("1"), i) for i, k in enumerate(kept)]
        near = [(d, i) for d, i in dists if d < threshold]
        want = min(near) if near else None
        got = index.nearest(q.to_bytes(32, "big"))
        assert got == (None if want is None else (want[1], want[0]))
    index.remove_from(100)  # a resumed build forgets what came after its checkpoint
    assert len(index) == 100 and index.nearest(kept[150].to_bytes(32, "big")) is None


def test_splits_depend_on_the_source_id_alone():
    rule = SplitRule.parse("train=0.8,val=0.1,test=0.1")
    ids = [f"occ-{i}" for i in range(5000)]
    first = [rule.assign(i) for i in ids]
    assert first == [SplitRule.parse("train=0.8,val=0.1,test=0.1").assign(i) for i in ids]
    share = {s: first.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02
    assert [rule.assign(i) for i in reversed(ids)] == first[::-1]  # order does not matter
    assert SplitRule.parse("train=0.8,val=0.1,test=0.1", salt="other").assign("occ-1") in ("train", "val", "test")


@pytest.mark.parametrize("text", ["train=0.5", "train=0.9,val", "train=1,train=0", "a b=1"])
def test_bad_split_specs_are_refused(text):
    with pytest.raises(InputError):
        parse_splits(text)


def test_retrieval_and_alignment_descriptors_match_a_cropped_copy():
    from taxoclip.data.leakage import AlignedMatch, EvalThumbnails, fine_descriptor, retrieval_descriptor, \
        stored_thumbnail

    evals = [photo(s, (96, 96)) for s in range(30)]
    thumbs = EvalThumbnails(np.stack([retrieval_descriptor(e) for e in evals]),
                            np.stack([stored_thumbnail(e) for e in evals]), AlignedMatch())
    copy = evals[7].crop((3, 1, 93, 92)).resize((150, 150))
    copy = Image.open(io.BytesIO(jpeg(copy, quality=40)))
    hit = thumbs.match(retrieval_descriptor(copy), fine_descriptor(copy))
    assert hit is not None and hit[0] == 7
    other = photo(999, (96, 96))
    assert thumbs.match(retrieval_descriptor(other), fine_descriptor(other)) is None


def test_the_same_scene_with_another_subject_is_not_a_copy():
    """Correlation is global: a scene with one part changed (another fish before the same reef
    camera) still correlates >= 0.93; the local residual test tells it from a copy."""
    from taxoclip.data.leakage import AlignedMatch, EvalThumbnails, aligned_correlation, fine_descriptor, \
        local_residual, retrieval_descriptor, stored_thumbnail

    evals = [photo(s, (96, 96)) for s in range(30)]
    thumbs = EvalThumbnails(np.stack([retrieval_descriptor(e) for e in evals]),
                            np.stack([stored_thumbnail(e) for e in evals]), AlignedMatch())
    scene = evals[7].copy()
    scene.paste(photo(500, (24, 24)), (36, 36))  # a sixteenth of the frame is another subject
    scene = Image.open(io.BytesIO(jpeg(scene, quality=80)))
    fine = fine_descriptor(scene)
    corr, renditions = aligned_correlation(fine, thumbs.stored[[7]], thumbs.params)
    assert corr[0] >= thumbs.params.accept and local_residual(fine, renditions[0]) > thumbs.params.local
    assert thumbs.match(retrieval_descriptor(scene), fine) is None


def test_giant_images_are_reduced_within_the_decode_budget_or_rejected_saying_so(giant_at_100k_pixels):
    from taxoclip.io.budget import DecodeBudget

    buf = io.BytesIO()
    photo(1, (2400, 1800)).save(buf, "TIFF")  # decoded whole (TIFF has no band decoder): its bytes are reserved
    spec = ImageSpec(size=64, min_side=64)
    with pytest.raises(Rejected, match="needs ~17 MB to decode, more than the decode memory budget of 8 MB"):
        decode(buf.getvalue(), spec, DecodeBudget(8 * 2**20))
    img, size = decode(buf.getvalue(), spec, DecodeBudget(64 * 2**20))
    assert size == (2400, 1800) and img.size == (800, 600)  # reduced 3x: still >= 4 x 128 (the fingerprint side)
