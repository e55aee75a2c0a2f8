"""Finding images in what users type, decoding every kind of image file, and writing results."""
import csv
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from taxoclip.errors import InputError
from taxoclip.io import ImageLoader, decode_image, find_images
from taxoclip.io.writers import format_for, open_writer
from taxoclip.models import ImagePreprocess


def _jpeg(path, size=(40, 30), color=(200, 30, 30), **kw):
    Image.new("RGB", size, color).save(path, **kw)
    return path


def test_folders_are_searched_recursively_with_any_extension_case(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    _jpeg(tmp_path / "a" / "x.JPG")
    _jpeg(tmp_path / "a" / "b" / "y.jpeg")
    Image.new("RGB", (8, 8)).save(tmp_path / "z.PNG")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    refs, problems = find_images([tmp_path])
    assert [r.name for r in refs] == [str(tmp_path / "z.PNG"), str(tmp_path / "a" / "x.JPG"),
                                      str(tmp_path / "a" / "b" / "y.jpeg")]
    assert problems == []


def test_globs_lists_and_shards(tmp_path):
    a, b = _jpeg(tmp_path / "a.jpg"), _jpeg(tmp_path / "b.jpg")
    (tmp_path / "list.txt").write_text("a.jpg\nb.jpg\n")
    pd.DataFrame({"filepath": [str(a)], "other": [1]}).to_csv(tmp_path / "list.csv", index=False)
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(a, "k1.jpg")
        tar.add(tmp_path / "list.txt", "k1.txt")
    refs, problems = find_images([str(tmp_path / "*.jpg"), tmp_path / "list.txt", tmp_path / "list.csv",
                                  tmp_path / "shard.tar"])
    names = [r.name for r in refs]
    assert names[:2] == [str(a), str(b)]
    assert names[2:4] == [str(a), str(b)] and names[4] == str(a)
    assert names[5] == f"{tmp_path / 'shard.tar'}/k1.jpg" and len(names) == 6
    assert not problems
    assert decode_image(refs[5].open()).size == (40, 30)


def test_inputs_without_images_are_reported_one_line_each(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    pd.DataFrame({"path_to_file": ["a.jpg"]}).to_csv(tmp_path / "bad.csv", index=False)
    refs, problems = find_images([empty, texts, tmp_path / "bad.csv", str(tmp_path / "*.webp")])
    assert refs == []
    assert problems[0].startswith(f"{empty}: no images in folder (no files)")
    assert "1 files, none with an image extension" in problems[1]
    assert "no 'filepath' column" in problems[2]
    assert "pattern matches no images" in problems[3]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert decode_image(tmp_path / "rot.jpg").size == (20, 60)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_any_mode_becomes_8bit_rgb(tmp_path, mode):
    base = Image.new("RGB", (16, 8), (120, 60, 30))
    img = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(np.full((8, 16), 40000, np.uint16))
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = decode_image(path)
    assert out.mode == "RGB" and out.size == (16, 8)
    if mode == "I;16":  # scaled to 8 bits, not clipped to white
        assert 150 < np.asarray(out)[0, 0, 0] < 160


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"this is text, not a picture", "not an image"),
])
def test_unreadable_files_raise_input_errors_naming_the_file(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(InputError, match=f"{p}: {reason}"):
        decode_image(p)


def test_truncated_jpeg_is_an_error(tmp_path):
    p = _jpeg(tmp_path / "t.jpg", size=(200, 200))
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(InputError, match="cannot decode"):
        decode_image(p)


def test_draft_decoding_only_shrinks_big_jpegs(tmp_path):
    big = _jpeg(tmp_path / "big.jpg", size=(1600, 1200))
    assert decode_image(big, draft=(224, 224)).size == (400, 300)
    small = _jpeg(tmp_path / "small.jpg", size=(400, 300))
    assert decode_image(small, draft=(224, 224)).size == (400, 300)


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_keeps_order_and_turns_bad_files_into_errors(tmp_path, workers):
    good = [_jpeg(tmp_path / f"g{i}.jpg", color=(i * 40, 0, 0)) for i in range(5)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    refs, _ = find_images([good[0], bad, *good[1:], tmp_path / "missing.jpg"])
    batches = list(ImageLoader(refs, ImagePreprocess(size=32), batch_size=3, workers=workers))
    assert [len(b.refs) for b in batches] == [3, 3, 1]
    assert batches[0].errors == {1: "not an image (or a format Pillow cannot read)"}
    assert batches[2].errors == {0: "file not found"}
    assert batches[0].pixels.shape == (2, 3, 32, 32)
    red = [b.pixels[j, 0, 0, 0].item() for b in batches for j in range(len(b.ok))]
    assert red == sorted(red)  # order kept: g0..g4 get redder


def test_squash_preprocess_matches_pybioclip():
    from torchvision import transforms

    ref = transforms.Compose([transforms.ToTensor(), transforms.Resize((224, 224), antialias=True),
                              transforms.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                   (0.26862954, 0.26130258, 0.27577711))])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    ours = ImagePreprocess(resize_mode="squash", interpolation="bilinear")(img)
    assert torch.equal(ours, ref(img))


def test_csv_writer_streams_rows_and_keeps_full_precision(tmp_path):
    out = tmp_path / "r.csv"
    w = open_writer("csv", out, ["file_name", "score", "error"])
    w.write([{"file_name": "a.jpg", "score": 0.123456789012}])
    assert out.read_text().splitlines()[1] == "a.jpg,0.123456789012,"  # on disk before close
    w.write([{"file_name": "b.jpg", "error": "not an image"}])
    w.close()
    rows = list(csv.DictReader(out.open()))
    assert rows[1] == {"file_name": "b.jpg", "score": "", "error": "not an image"}


def test_parquet_jsonl_and_table_writers(tmp_path, capsys):
    rows = [{"file_name": "a.jpg", "species": "Puma concolor", "score": 0.9, "error": None}]
    cols = ["file_name", "species", "score", "error"]
    with open_writer("parquet", tmp_path / "r.parquet", cols) as w:
        w.write(rows)
    assert pd.read_parquet(tmp_path / "r.parquet").species.tolist() == ["Puma concolor"]
    with open_writer("jsonl", tmp_path / "r.jsonl", cols) as w:
        w.write(rows)
    assert json.loads((tmp_path / "r.jsonl").read_text())["score"] == 0.9
    with open_writer("table", None, cols) as w:
        w.write(rows)
    table = capsys.readouterr().out
    assert "Puma concolor" in table and "error" not in table  # an all-empty error column is hidden
    assert format_for("x.parquet", None) == "parquet" and format_for(None, None) == "csv"
