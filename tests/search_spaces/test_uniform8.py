"""The uint8 activation quantizer: ONNX's QuantizeLinear exactly, calibrated with 0 a level."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import LayerPlan, Plan
from search_spaces.methods import Uint8Config, activation_method
from search_spaces.methods.uniform8 import Uint8Quantizer


def test_post_relu_data_get_zero_point_zero_and_signed_data_keep_zero_a_level():
    torch.manual_seed(0)
    relu = Uint8Quantizer()
    relu.init_from(torch.relu(torch.randn(4096)))
    assert int(relu.zero_point) == 0 and float(relu.scale) > 0
    signed = Uint8Quantizer()
    signed.init_from(torch.randn(4096) + 0.5)
    with torch.no_grad():
        assert float(signed(torch.zeros(3)).abs().max()) == 0.0  # zero is exactly a level
    assert 0 < int(signed.zero_point) < 255


def test_the_onnx_runtime_quantizes_as_the_module_does(tmp_path):
    import onnxruntime

    torch.manual_seed(0)
    unit = activation_method("uint8")
    x = torch.randn(8, 3, 16, 16) * 2
    quantizer = unit.build(Uint8Config(), x)
    deployed = unit.deployed(quantizer)
    with torch.no_grad():
        torch.onnx.export(
            nn.Sequential(deployed), (x,), tmp_path / "q.onnx", dynamo=True, opset_version=21
        )
    session = onnxruntime.InferenceSession(str(tmp_path / "q.onnx"))
    (ran,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    ops = [node.op_type for node in __import__("onnx").load(tmp_path / "q.onnx").graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(ran), quantizer(x))


def test_only_8_bits_and_old_n2uq_plans_still_load():
    assert Uint8Config().bits == 8
    old = LayerPlan.from_dict({"activations": {"method": "n2uq", "bits": 8}}, layer="body")
    assert old.activations.method == "n2uq"  # an old plan's 8-bit N2UQ stays N2UQ
    plan = Plan({"body": LayerPlan(activations=Uint8Config())})
    assert Plan.from_json(plan.to_json()) == plan
