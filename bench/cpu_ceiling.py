"""What this machine allows: matmul peaks, the image tower's speed per batch size, the vocabulary scan.

    python ../shared/tools/make_fake_hub.py /tmp/fakehub
    python bench/cpu_ceiling.py --hub /tmp/fakehub

Prints
  * fp32 and bf16 TFLOP/s of a large matrix product (the bf16 / fp32 ratio bounds what bf16
    inference can gain over pybioclip's fp32: ~6x on AMX CPUs, ~2x with AVX512-BF16 alone);
  * bioclip-2's ViT-L/14 image tower in bf16, photos/s for each batch size and as a fraction
    of the bf16 peak (162 GFLOP per photo);
  * one scan of the 867,455-taxon vocabulary for 16 photos (top-5 with exact softmax).
Together with pybioclip's photos/s from bench_predict.py, they give the ceiling of the
steady-state ratio on this machine.
"""
from __future__ import annotations

import argparse
import os
import time

VIT_L14_GFLOP = 162.0  # 2 x 81 GMAC per 224 px image, image tower only


def rate(fn, seconds: float) -> float:
    """Calls per second of `fn` over at least `seconds` (after one warm-up call)."""
    fn()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n < 2:
        fn()
        n += 1
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hub", required=True, help="HF_HUB_CACHE made by make_fake_hub.py")
    ap.add_argument("--batches", default="4,8,16,32")
    ap.add_argument("--seconds", type=float, default=12.0, help="per measurement")
    args = ap.parse_args()
    os.environ.update(HF_HUB_CACHE=args.hub, HF_HUB_OFFLINE="1")
    import torch

    from taxoclip.models import load_model
    from taxoclip.textbank import TextBank

    n = 2048
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        peaks[name] = 2 * n**3 * rate(lambda: a @ b, args.seconds / 3) / 1e12
        print(f"matmul {n}x{n} {name}: {peaks[name]:.3f} TFLOP/s", flush=True)
    print(f"bf16 / fp32: {peaks['bf16'] / peaks['fp32']:.2f}x", flush=True)

    model = load_model("bioclip-2", precision="bf16")
    for bs in (int(x) for x in args.batches.split(",")):
        x = torch.randn(bs, 3, 224, 224)
        photos = bs * rate(lambda: model.encode_image(x), args.seconds)
        print(f"ViT-L/14 image tower bf16, batch {bs:3d}: {photos:.2f} photos/s "
              f"({photos * VIT_L14_GFLOP / 1e3 / peaks['bf16']:.0%} of the bf16 matmul peak)", flush=True)

    bank = TextBank.from_published(model=model)
    feats = torch.nn.functional.normalize(torch.randn(16, bank.dim), dim=-1)
    per_scan = 1 / rate(lambda: bank.top_k(feats, 5, model.logit_scale), args.seconds / 2)
    print(f"vocabulary scan, {len(bank):,} taxa, 16 photos: {per_scan:.2f} s ({per_scan / 16 * 1e3:.0f} ms per photo)")


if __name__ == "__main__":
    main()
