"""The image tower in inference form: folded, statically padded and traced, it computes what the
timm tower computes, and a later load needs neither timm nor open_clip."""
import os
import subprocess
import sys

import pytest
import timm
import torch

from taxoclip.models import inference
from taxoclip.models.inference import OnnxTower, export_onnx, fold_batchnorms, inference_tower, static_padding


@pytest.mark.parametrize("size", [64, 65, 97])  # even and odd inputs: TF pads 0/1 or 1/1 per side
def test_inference_form_matches_the_timm_tower(size):
    net = _lite0()
    x = torch.randn(3, 3, size, size)
    with torch.inference_mode():
        ref = net(x)
        graph = inference_tower(net, size)
        out = graph(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    kinds = {type(m).__module__ for m in graph.modules()}
    assert all(k.startswith("torch.") for k in kinds), kinds  # loading it back imports no timm
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in graph.modules())


def _lite0() -> torch.nn.Module:
    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", num_classes=8).eval()
    for m in net.modules():  # non-trivial statistics, so folding them has something to get right
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_onnx_runtime_computes_what_the_torch_graph_computes(tmp_path):
    """The exported tower, at any batch size (the export fixes only the pixels' size)."""
    graph = inference_tower(_lite0(), 64)
    export_onnx(graph, 64, tmp_path / "tower.onnx")
    tower = OnnxTower(tmp_path / "tower.onnx")
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 64)
        with torch.inference_mode():
            assert torch.allclose(tower(x), graph(x), atol=1e-4, rtol=1e-4)


def test_a_tower_onnx_cannot_take_runs_with_torch_and_is_not_exported_again(tmp_path, monkeypatch):
    """An export that fails costs one run a log line, not an error, and later runs skip it."""
    from taxoclip.models import load_model

    calls = []

    def refuse(graph, size, path):
        calls.append(path)
        raise RuntimeError("operator not supported")

    monkeypatch.setenv("TAXOCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inference, "export_onnx", refuse)
    x = torch.randn(2, 3, 96, 96)
    first = load_model(precision="fp32")
    later = load_model(precision="fp32")
    assert all(isinstance(m.visual, torch.fx.GraphModule) for m in (first, later))
    assert len(calls) == 1 and (calls[0].parent / "tower.onnx-failed").is_file()
    assert torch.allclose(first.encode_image(x), later.encode_image(x), atol=1e-5)


def test_taxoclip_onnx_0_keeps_the_tower_on_torch(tmp_path, monkeypatch):
    from taxoclip.models import load_model

    monkeypatch.setenv("TAXOCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TAXOCLIP_ONNX", "0")
    model = load_model(precision="fp32")
    assert isinstance(model.visual, torch.fx.GraphModule)
    assert not list((tmp_path / "cache").rglob("tower.onnx"))


def test_folding_and_padding_report_what_they_changed():
    net = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    assert static_padding(net, torch.zeros(1, 3, 64, 64)) == 5  # the stem and four stride-2 depthwise convs
    assert fold_batchnorms(net) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def test_later_loads_use_the_cached_tower_without_timm(tmp_path):
    """The first load prepares the tower; the next process loads it from the cache, imports no
    timm or open_clip, and embeds the same; the text tower still loads when a text is encoded."""
    env = dict(os.environ, TAXOCLIP_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    code = ("import sys, torch; from taxoclip.models import load_model; m = load_model(precision='fp32'); "
            "torch.manual_seed(0); f = m.encode_image(torch.randn(2, 3, 96, 96)); "
            "print(type(m.visual).__name__, 'timm' in sys.modules, 'open_clip' in sys.modules, "
            "' '.join(f'{v:.5f}' for v in f[0, :4].tolist())); "
            "t = m.encode_text(['a photo of Malus domestica.']); print(t.shape[1], f'{float(t.norm()):.4f}')")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, later = (r.stdout.split("\n")[0].split(" ", 3) for r in runs)
    assert first[1] == "True" and later[:3] == ["OnnxTower", "False", "False"]
    assert first[3] == later[3]  # the same embedding either way
    assert runs[1].stdout.split("\n")[1].split() == ["128", "1.0000"]
