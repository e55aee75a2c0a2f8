"""The image tower in inference form: batch norms folded into their convolutions, TensorFlow
"same" padding made static for the model's input size, the result traced into a graph of
plain `torch.nn` modules, and cached.

Why: on a CPU a folded convolutional tower runs faster (EfficientNet-Lite0 at 96 px, batch 64,
2 Zen 3 cores: 4.76 -> 3.62 ms per photo, `bench/bench_inference_form.py`; each batch norm was
a pass over memory of its own),
and the traced graph loads without importing timm or open_clip, which with torchvision and
torch._dynamo behind them take ~4 s of every run's start on such a machine.

On the CPU in float32 the graph is also exported to ONNX once and run by ONNX Runtime
(`OnnxTower`), whose depthwise convolutions (most of this tower) are faster than torch's: 3.94
-> 3.18 ms per photo at batch 64 and 4.74 -> 2.96 at 16, a server's batch (same machine,
`bench/bench_inference_form.py`). Whole `taxoclip predict` runs gain less, as the tower is a
third of their time: x0.96 and x1.07 in steady state (`bench/bench_mini.py --torch-tower`); a
server's batches of 16 gain more (61.7 -> 73.1 photos/s under 16 clients, `bench/bench_serve.py`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorms", "static_padding", "inference_tower", "save_tower", "load_tower", "OnnxTower",
           "onnx_runs", "export_onnx"]

log = logging.getLogger(__name__)

# Part of the cache key: bump when the transformation changes what a cached tower computes.
FORM_VERSION = 1


def fold_batchnorms(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it (eval statistics).

    timm registers a block's layers in the order its forward runs them (conv_dw, bn1, ...,
    conv_pw, bn2), so a BatchNorm2d child right after a Conv2d child normalises that
    convolution's output. timm's BatchNormAct2d keeps its activation (and dropout) in place.
    Returns how many were folded.
    """
    n = 0
    kids = list(module.named_children())
    for (conv_name, conv), (bn_name, bn) in zip(kids, kids[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats \
                and conv.out_channels == bn.num_features:
            setattr(module, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(module, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
            n += 1
    return n + sum(fold_batchnorms(child) for child in module.children())


def static_padding(module: nn.Module, example: torch.Tensor) -> int:
    """Replace convolutions that pad at run time (timm's Conv2dSame: TF "same" with stride > 1)
    by plain convolutions, for inputs shaped like `example`.

    TF pads one more zero at the end than at the start. A plain convolution pads both sides
    alike, so its kernel gains a leading row/column of zeros instead: the same sums, with no
    padded copy of the activations (which also lost channels-last layout: 3-7x slower).
    """
    from timm.layers.padding import get_same_padding

    seen: dict[str, tuple[int, int]] = {}
    dynamic = {name: m for name, m in module.named_modules() if type(m).__name__ == "Conv2dSame"}

    def record(name):
        def hook(_module, args):  # returns None: the inputs stay as they are
            seen.setdefault(name, tuple(args[0].shape[-2:]))
        return hook
    hooks = [m.register_forward_pre_hook(record(name)) for name, m in dynamic.items()]
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    for name, conv in dynamic.items():
        pads, lead = [], []
        for size, k, st, d in zip(seen[name], conv.kernel_size, conv.stride, conv.dilation):
            total = get_same_padding(size, k, st, d)
            start, end = total // 2, total - total // 2
            if d != 1 and end != start:
                raise TypeError(f"{name}: dilated asymmetric padding has no static form")
            pads.append(end)
            lead.append(end - start)  # 0 or 1 zero taps in front
        weight = nn.functional.pad(conv.weight.detach(), (lead[1], 0, lead[0], 0))
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride, tuple(pads),
                          conv.dilation, conv.groups, conv.bias is not None,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        plain.weight = nn.Parameter(weight, requires_grad=False)
        plain.bias = conv.bias
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, plain)
    return len(dynamic)


def inference_tower(visual: nn.Module, size: int, dtype: torch.dtype = torch.float32) -> torch.fx.GraphModule:
    """A traced, folded copy of a convolutional image tower for `size` x `size` inputs.

    Raises (torch.fx's TraceError and the like) for towers that cannot be traced; callers keep
    the tower they have then.
    """
    import copy

    tower = copy.deepcopy(visual).float().eval()
    example = torch.zeros(2, 3, size, size)
    static_padding(tower, example)
    folded = fold_batchnorms(tower)
    graph = torch.fx.symbolic_trace(tower)
    foreign = {type(m).__module__ for m in graph.modules()} - {"torch.fx.graph_module"}
    foreign = {m for m in foreign if not m.startswith("torch.nn.")}
    if foreign:  # a leaf from timm or open_clip: loading it back would import them after all
        raise TypeError(f"traced tower still holds modules from {sorted(foreign)}")
    log.info("image tower in inference form: %d batch norms folded", folded)
    return graph.to(dtype)


def save_tower(graph: torch.fx.GraphModule, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(graph, tmp)
    tmp.replace(path)


def load_tower(path: Path, device: torch.device) -> nn.Module:
    """A tower `save_tower` wrote into taxoclip's own cache (a pickled torch.fx graph: the cache
    is trusted as the Hugging Face cache is, and holds nothing a client sent)."""
    return torch.load(path, map_location=device, weights_only=False).eval()


# ----- ONNX Runtime ------------------------------------------------------------------------
def onnx_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ONNX Runtime runs this tower here: CPU, float32 (bf16 stays with torch's oneDNN
    kernels, which have it natively on CPUs with AMX), the runtime installed, and not turned off
    with `TAXOCLIP_ONNX=0` (which keeps the torch graph, e.g. to compare the two)."""
    import importlib.util
    import os

    return (device.type == "cpu" and dtype == torch.float32 and os.environ.get("TAXOCLIP_ONNX", "1") != "0"
            and importlib.util.find_spec("onnxruntime") is not None)


def export_onnx(graph: nn.Module, size: int, path: Path) -> None:
    """Write `graph` as ONNX with a free batch dimension (atomically: a half-written file is never loaded)."""
    import warnings

    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and shape-inference notes
        torch.onnx.export(graph.float().eval(), (torch.zeros(2, 3, size, size),), str(tmp), dynamo=False,
                          input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}}, opset_version=17)
    tmp.replace(path)


class OnnxTower(nn.Module):
    """An exported inference-form tower run by ONNX Runtime; takes and returns torch tensors,
    so `ClipModel` uses it as it uses the torch graph."""

    def __init__(self, path: Path):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # as many as torch was given (`configure_threads`)
        opts.inter_op_num_threads = 1
        # threads that spin after a batch would take the cores from the vocabulary scan and decoding
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no arena: it keeps every batch's activations (+0.16 GB peak on 512 photos) and was not faster
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().float().contiguous().numpy()  # CPU only (`onnx_runs`)
        return torch.from_numpy(self.session.run(None, {"pixels": x})[0])
