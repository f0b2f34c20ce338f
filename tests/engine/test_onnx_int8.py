"""Int8 layers in the ONNX file: ONNX Runtime fuses them into int8 kernels where the model
quantizes their outputs, and the file computes what compplan's model computes."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.export import export, load
from engine.onnx_export import export_onnx
from engine.onnx_session import onnx_session
from planner.presets import make_preset
from search_spaces import discover


class _Residual(nn.Module):
    """conv → BN → ReLU → conv → BN, added to the input, then ReLU: the ResNet block."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block = _Residual(32)
        self.mid = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU6())
        self.expand = nn.Conv2d(32, 64, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.expand(self.mid(self.block(self.stem(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """(the int8 model as `load` rebuilds it, its ONNX report, an open session)."""
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net.train()
        net(torch.randn(64, 3, 16, 16))
    net.eval()
    x = torch.randn(32, 3, 16, 16)
    graph = discover(net, x[:1])
    preset = make_preset(graph, "bits:8+act:8")
    # expand keeps float inputs: an fp32 layer reading an int8 one
    expand = dataclasses.replace(preset.layers["expand"], activations=None)
    plan = dataclasses.replace(preset, layers={**preset.layers, "expand": expand})
    model = copy.deepcopy(net)
    apply_plan_(model, plan, calibration=x, config=ApplyConfig(progress=False))
    folder = tmp_path_factory.mktemp("int8")
    export(model, folder / "m.cpz")
    rebuilt = load(folder / "m.cpz", model=_Net())
    report = export_onnx(rebuilt, x[:1], folder / "m.onnx")
    return rebuilt, report, onnx_session(folder / "m.onnx", threads=1)


def test_every_int8_layer_runs_an_int8_kernel(compressed):
    model, report, session = compressed
    kernels = {name: layer["kernel"] for name, layer in report.layers.items()}
    assert kernels == {
        "block.conv1": "int8",
        "block.conv2": "int8",
        "mid.0": "int8",
        "expand": "fp32",
    }
    assert session.kernels["int8"] == 3
    assert session.metadata["layers"] == report.layers
    # conv1 feeds conv2 through BN and ReLU: conv2's input quantizer is its output's; its
    # BatchNorm is merged, as into every int8 convolution, so the model rounds as the kernel.
    conv1 = model.get_submodule("block.conv1")
    assert conv1.out_quant is None and conv1.merged_batchnorm == "block.bn1"
    # conv2 flows into the residual Add, mid.0 into a float layer: each quantizes its output
    # after its BatchNorm, merged in.
    for name, batchnorm in (("block.conv2", "block.bn2"), ("mid.0", "mid.1")):
        layer = model.get_submodule(name)
        assert layer.out_quant is not None and layer.merged_batchnorm == batchnorm
        assert isinstance(model.get_submodule(batchnorm), nn.Identity)


def test_the_file_computes_what_the_model_computes(compressed):
    model, _, session = compressed
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x)
    ran = session.module()(x)
    assert (ran.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95
    # The int8 kernels accumulate in integers: an output level apart at most, here and there.
    assert (ran - expected).abs().max() < 0.05 * expected.abs().max()


def test_a_layer_planned_for_int8_that_runs_fp32_is_named_in_a_warning(
    compressed, tmp_path, caplog
):
    import json

    import onnx

    _, report, _ = compressed
    model = onnx.load(str(report.path))
    entry = next(p for p in model.metadata_props if p.key == "compplan")
    meta = json.loads(entry.value)
    meta["layers"]["expand"]["kernel"] = "int8"  # float inputs: ORT runs it in fp32
    entry.value = json.dumps(meta)
    onnx.save(model, str(tmp_path / "edited.onnx"))
    with caplog.at_level("WARNING", logger="compplan"):
        session = onnx_session(tmp_path / "edited.onnx")
    assert session.kernels["int8"] == 3
    assert "1 of the 4 layers planned for int8 kernels run in fp32" in caplog.text
    assert "expand" in caplog.text


class _TokenMlp(nn.Module):
    """Linear layers on (batch, tokens, features), each read by a GELU or a LayerNorm: the
    transformer's pattern, where no int8 layer reads an int8 layer's output."""

    def __init__(self):
        super().__init__()
        self.inp, self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 64), nn.Linear(64, 32)
        self.norm, self.out = nn.LayerNorm(32), nn.Linear(32, 8)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.norm(h + self.down(nn.functional.gelu(self.up(h)))))


def test_linear_layers_run_int8_with_float_outputs(tmp_path):
    """An int8 Linear needs no quantized output: ONNX Runtime runs it as QGemm, and the file
    computes what the model computes (its bias on the kernel's int32 grid)."""
    torch.manual_seed(0)
    net = _TokenMlp().eval()
    x = torch.randn(16, 5, 16)
    plan = make_preset(discover(net, x[:1]), "bits:8+act:8")
    assert set(plan.layers) == {"inp", "up", "down"}  # the output layer is protected
    model = copy.deepcopy(net)
    apply_plan_(model, plan, calibration=x, config=ApplyConfig(progress=False))
    export(model, tmp_path / "m.cpz")
    rebuilt = load(tmp_path / "m.cpz", model=_TokenMlp())
    report = export_onnx(rebuilt, x[:1], tmp_path / "m.onnx")
    session = onnx_session(tmp_path / "m.onnx", threads=1)
    assert {n: layer["kernel"] for n, layer in report.layers.items()} == dict.fromkeys(
        plan.layers, "int8"
    )
    assert session.kernels["int8"] == 3 and session.kernels["dequantize"] == 0
    probe = torch.randn(8, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = rebuilt(probe)
    ran = session.module()(probe)
    assert (ran - expected).abs().max() < 1e-4 * expected.abs().max()
    # The bias the model adds is on the int32 grid, not the float bias.
    up = rebuilt.get_submodule("up")
    with torch.no_grad():
        _, kernel_bias = up.kernel_parameters()
    assert (kernel_bias - up.bias).abs().max() > 0
