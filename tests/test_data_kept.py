"""What a build remembers of kept images: exact and near lookups on disk, rewound on resume."""
from __future__ import annotations

import random

from taxoclip.data.kept import KeptImages


def _hash(rng: random.Random) -> bytes:
    return rng.getrandbits(256).to_bytes(32, "big")


def _flip(h: bytes, bits: int) -> bytes:
    v = int.from_bytes(h, "big")
    for b in range(bits):
        v ^= 1 << (7 * b)
    return v.to_bytes(32, "big")


def test_exact_and_near_lookups_name_the_first_kept_image(tmp_path):
    rng = random.Random(0)
    kept = KeptImages(tmp_path / "kept.sqlite", near_threshold=10)
    a, b = _hash(rng), _hash(rng)
    kept.add(0, "uuid-a", "00" * 16, a)
    kept.add(3, "uuid-b", "11" * 16, b)
    kept.add(5, "uuid-flat", "22" * 16, None)  # a low-quality hash: exact matching only
    assert kept.exact("11" * 16) == "uuid-b" and kept.exact("22" * 16) == "uuid-flat"
    assert kept.exact("33" * 16) is None
    assert kept.near(_flip(a, 9)) == ("uuid-a", 9)
    assert kept.near(_flip(a, 10)) is None  # distance < threshold only
    assert kept.near(_hash(rng)) is None
    kept.close()


def test_a_reopened_index_rewinds_to_the_checkpoint(tmp_path):
    """Rows committed after the last checkpoint (a run that stopped on an error commits on
    its way out) are forgotten by `rewind`, so resumed records do not match themselves."""
    rng = random.Random(1)
    hashes = [_hash(rng) for _ in range(6)]
    kept = KeptImages(tmp_path / "kept.sqlite", near_threshold=10)
    for seq, h in enumerate(hashes[:3]):
        kept.add(seq, f"u{seq}", f"{seq:032x}", h)
    kept.commit()  # the checkpoint: records 0-2 decided
    for seq, h in enumerate(hashes[3:], start=3):
        kept.add(seq, f"u{seq}", f"{seq:032x}", h)
    kept.close()
    kept = KeptImages(tmp_path / "kept.sqlite", near_threshold=10)
    assert kept.exact(f"{4:032x}") == "u4"
    kept.rewind(3)
    assert kept.exact(f"{4:032x}") is None and kept.near(hashes[4]) is None
    assert kept.exact(f"{2:032x}") == "u2" and kept.near(hashes[2]) == ("u2", 0)
    kept.close()


def test_near_matching_can_be_off(tmp_path):
    kept = KeptImages(tmp_path / "kept.sqlite", near_threshold=0)
    h = _hash(random.Random(2))
    kept.add(0, "u0", "00" * 16, h)
    assert kept.near(h) is None and kept.exact("00" * 16) == "u0"
    kept.close()
