"""N2UQ activation quantizers in the ONNX file: the file stores their thresholds, and ONNX
Runtime computes what the frozen quantizer computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.export import export, load
from engine.onnx_export import export_onnx
from search_spaces import discover
from search_spaces.methods.frozen_quantizer import FrozenActivationQuantizer
from search_spaces.methods.n2uq import N2UQConfig
from search_spaces.plan import LayerPlan, Plan


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(12, 32), nn.Linear(32, 32)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(torch.relu(self.second(torch.relu(self.first(x)))))


@pytest.mark.parametrize("bits", [4, 8])
def test_the_file_stores_thresholds_and_computes_the_frozen_quantizer(bits, tmp_path):
    import onnx
    import onnxruntime

    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.randn(256, 12)
    graph = discover(net, x[:1])
    quantized = LayerPlan(activations=N2UQConfig(bits=bits))
    plan = Plan({"second": quantized, "out": quantized}, fingerprint=graph.fingerprint)
    model = copy.deepcopy(net)
    apply_plan_(model, plan, calibration=x, config=ApplyConfig(progress=False))
    export(model, tmp_path / "m.cpz")
    compressed = load(tmp_path / "m.cpz", model=_Net())
    report = export_onnx(compressed, x[:1], tmp_path / "m.onnx")
    frozen = FrozenActivationQuantizer.of(compressed.get_submodule("second").act_quant)
    table = 4 * (frozen.cell_base.numel() + frozen.cell_thresholds.numel())
    thresholds = 4 * (2**bits - 1)
    if bits == 8:  # 2 quantizers: thresholds and at most two scalars each, no 2,052-cell table
        assert 2 * thresholds <= report.quantizer_bytes <= 2 * (thresholds + 2 * 4)
        stored = onnx.load(str(report.path)).graph.initializer
        kept = (".weight", ".bias", ".thresholds")
        derived = [t for t in stored if not t.name.endswith(kept)]
        assert all(np.prod(t.dims) <= 64 for t in derived), "a derived tensor is stored"
    else:  # small tables are stored as they are: fewer bytes than the graph deriving them
        assert 0 < report.quantizer_bytes <= 2 * (thresholds + table + 2 * 4)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    probe = torch.randn(512, 12, generator=torch.Generator().manual_seed(1)) * 2
    (ran,) = session.run(None, {session.get_inputs()[0].name: probe.numpy()})
    with torch.no_grad():
        expected = compressed(probe).numpy()
    np.testing.assert_allclose(ran, expected, rtol=1e-5, atol=1e-5)
