"""The measured reasons behind taxoclip-mini's fast path, side by side in one process:

    python bench/bench_inference_form.py

  * the image tower as timm builds it (channels-last) vs in inference form (batch norms folded,
    padding static, traced: `taxoclip.models.inference`), batch 64 at the model's 96 px;
  * that inference-form graph run by torch vs exported to ONNX and run by ONNX Runtime (what
    a float32 CPU run uses), batches of 64 and of 16 (a server's);
  * the vocabulary scan with 16,384-row chunks (the default) vs 65,536-row chunks.
Each pair is timed alternately, 5 rounds; the medians and their ratio are printed (this
machine's timings drift by +-20 % between runs, alternating keeps the drift out of the ratio).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def alternate(fns: dict, rounds: int = 5) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    import taxoclip.textbank as tb
    from taxoclip.models import inference, load_model
    from taxoclip.models.loading import fast_load, is_text_key
    from taxoclip.textbank import TextBank

    model = load_model(precision="fp32")  # the bundled taxoclip-mini, tower in inference form
    src = model.source
    built, _ = fast_load(src.model_cfg, src.weights, torch.float32, torch.device("cpu"), lambda k: not is_text_key(k))
    timm_tower = built.visual.eval().to(memory_format=torch.channels_last)
    graph = inference.inference_tower(built.visual, 96).to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        inference.export_onnx(graph, 96, Path(tmp) / "tower.onnx")
        onnx = inference.OnnxTower(Path(tmp) / "tower.onnx")
    x = torch.randn(64, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t = alternate({"timm": lambda: timm_tower(x), "inference form": lambda: graph(x)})
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
    print(f"machine: {os.cpu_count()} CPUs, {cpu}; torch threads {torch.get_num_threads()}")
    print(f"image tower, ms per photo (batch 64): timm {1e3 * t['timm'] / 64:.2f} | inference form "
          f"{1e3 * t['inference form'] / 64:.2f} | x{t['timm'] / t['inference form']:.2f}")
    for n in (64, 16):
        xn = x[:n]
        with torch.inference_mode():
            t = alternate({"torch": lambda: graph(xn), "onnx": lambda: onnx(xn.contiguous())})
            gap = float((onnx(xn.contiguous()) - graph(xn)).abs().max())
        print(f"inference form, ms per photo (batch {n}): torch {1e3 * t['torch'] / n:.2f} | ONNX Runtime "
              f"{1e3 * t['onnx'] / n:.2f} | x{t['torch'] / t['onnx']:.2f} (largest difference {gap:.1e})")

    bank = TextBank.from_published(model=model)
    feats = torch.nn.functional.normalize(torch.randn(64, model.embed_dim), dim=-1)

    def scan(rows):
        def run():
            tb.CHUNK_ROWS = rows
            bank.top_k(feats, 5, model.logit_scale)
        return run
    default = tb.CHUNK_ROWS
    try:
        s = alternate({"16384": scan(16384), "65536": scan(65536)})
    finally:
        tb.CHUNK_ROWS = default
    print(f"vocabulary scan ({len(bank):,} rows, int8), ms per photo (batch 64): 16,384-row chunks "
          f"{1e3 * s['16384'] / 64:.2f} | 65,536-row chunks {1e3 * s['65536'] / 64:.2f} | x{s['65536'] / s['16384']:.2f}")


if __name__ == "__main__":
    main()
