"""Builders for tiny models, vocabularies in the published layout and offline HF caches."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image


def tiny_model_cfg(image_size: int = 32, patch_size: int = 8, embed_dim: int = 32) -> dict:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "patch_size": patch_size, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def save_tiny_model(out: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0,
                    preprocess_cfg: dict | None = None) -> Path:
    """A randomly initialised open_clip CLIP in the open_clip layout (safetensors + config)."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = tiny_model_cfg(image_size, patch_size)
    model = CLIP(**cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    pre = preprocess_cfg or {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    return out


def random_taxa(n: int, seed: int = 0) -> list:
    """Vocabulary entries [[7 ranks], common] with real hierarchy (several species per genus…)."""
    r = random.Random(seed)
    syl = ["ar", "bo", "ca", "de", "fi", "gu", "hy", "lo", "ma", "ne", "op", "ri", "sa", "tu", "ve", "xi"]
    word = lambda k: "".join(r.choice(syl) for _ in range(k))
    kingdoms = ["Animalia", "Plantae", "Fungi"]
    phyla = {k: [word(2).title() + "ta" for _ in range(2)] for k in kingdoms}
    entries, lineage = [], None
    for i in range(n):
        if i % 40 == 0:
            k = kingdoms[(i // 40) % 3]
            order = [k, r.choice(phyla[k]), word(2).title() + "ia", word(2).title() + "ales"]
        if i % 8 == 0:
            family = word(2).title() + "idae"
        if i % 4 == 0:
            lineage = order + [family, word(2).title()]
        epithet = "" if i % 37 == 5 else word(3)  # a few genus-level entries
        common = "" if i % 3 == 0 else f"{word(2)} {word(2)}"
        entries.append([lineage + [epithet], common])
    return entries


def write_vocabulary(out: Path, dim: int, n: int, seed: int = 0, zero_columns: tuple[int, ...] = ()) -> Path:
    """`txt_emb_species.npy` [dim, n] float32 (unit columns) + `txt_emb_species.json`."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((dim, n)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=0, keepdims=True)
    emb[:, list(zero_columns)] = 0
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "txt_emb_species.npy", emb)
    (out / "txt_emb_species.json").write_text(json.dumps(random_taxa(n, seed)))
    return out


def snapshot(root: Path, kind: str, repo: str) -> Path:
    """A snapshot folder laid out as huggingface_hub's cache (refs/main -> snapshots/<rev>)."""
    d = root / f"{kind}--{repo.replace('/', '--')}"
    rev = hashlib.sha1(repo.encode()).hexdigest()
    (d / "refs").mkdir(parents=True, exist_ok=True)
    (d / "refs" / "main").write_text(rev)
    s = d / "snapshots" / rev
    s.mkdir(parents=True, exist_ok=True)
    return s


def make_hf_cache(root: Path, *, image_size: int = 32, patch_size: int = 8, n_taxa: int = 300,
                  zero_columns: tuple[int, ...] = (7, 100)) -> Path:
    """An offline HF cache with imageomics/bioclip-2 (tiny, random) and its vocabulary."""
    save_tiny_model(snapshot(root, "models", "imageomics/bioclip-2"), image_size, patch_size)
    write_vocabulary(snapshot(root, "datasets", "imageomics/TreeOfLife-200M") / "embeddings",
                     tiny_model_cfg()["embed_dim"], n_taxa, zero_columns=zero_columns)
    return root


def make_photos(out: Path, n: int = 6, seed: int = 0) -> list[Path]:
    """Small synthetic JPEG 'photos' of varied sizes (smooth gradients plus noise)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(40, 160)), int(rng.integers(40, 120))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, ((xx + yy) % 17) / 17], -1) * 255
        img = np.clip(base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        p = out / f"photo_{i:02d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def bio_mini_photo(bio_mini: Path, set_name: str) -> tuple[bytes, dict]:
    """The first validation photo of a bio-mini set (JPEG bytes) and its labels."""
    import json
    import tarfile

    with tarfile.open(sorted((bio_mini / set_name).glob("val-*.tar"))[0]) as tf:
        members = {m.name: m for m in tf}
        name = next(n for n in members if n.endswith(".json"))
        return tf.extractfile(members[name[:-5] + ".jpg"]).read(), json.load(tf.extractfile(members[name]))
