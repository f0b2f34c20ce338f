"""Cases found by trying to break the engine: BatchNorms kept as is, tensors corrupted in place,
files naming code to run, failures that must leave the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.apply import ApplyConfig, apply_plan_
from engine.export import ExportError, export, load
from predictors.size import size_report
from search_spaces import BitsConfig, LayerPlan, N2UQConfig, Plan, PlanError, VQConfig, discover
from search_spaces.knobs import kept_channels

QUIET = ApplyConfig(progress=False, kmeans_iterations=5)


class PreActivation(nn.Module):
    """A BatchNorm after a residual add (kept as is), and one without affine parameters."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.inner = nn.Conv2d(32, 32, 3, padding=1)
        self.bn_inner = nn.BatchNorm2d(32, affine=False)
        self.mix = nn.Conv2d(32, 32, 3, padding=1)
        self.post = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        y = self.stem(x)
        y = self.post(y + self.mix(torch.relu(self.bn_inner(self.inner(y)))))
        return self.head(y.mean((2, 3)))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    net = PreActivation()
    with torch.no_grad():
        net.train()
        net(torch.rand(16, 3, 8, 8))
    return net.eval()


def test_a_group_through_a_kept_batchnorm_is_not_pruned(model):
    graph = discover(model, torch.zeros(1, 3, 8, 8))
    assert "post" in {k.name for k in graph.kept}
    stream = graph.group_of("stem")
    assert not stream.prunable and "BatchNorm 'post'" in stream.reason
    assert graph.group_of("inner").prunable


def test_batchnorms_cost_two_vectors_per_channel_with_or_without_affine(model, tmp_path):
    graph = discover(model, torch.zeros(1, 3, 8, 8))
    assert size_report(Plan({}), graph).total_bits == graph.baseline_bits
    plan = Plan(
        {
            "inner": LayerPlan(weights=VQConfig(k=16, m=9), keep=0.5),
            "mix": LayerPlan(weights=BitsConfig(bits=2)),
        }
    )
    student = copy.deepcopy(model)
    apply_plan_(student, plan, calibration=torch.rand(32, 3, 8, 8), config=QUIET)
    report = export(student, tmp_path / "m.cpz", model_spec=None)
    predicted = size_report(plan, graph).total_bits / 8
    assert 0 <= report.payload_bytes - predicted < report.packed_tensors


def test_failures_leave_the_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = Plan({"inner": LayerPlan(keep=0.5, activations=N2UQConfig(bits=4))})
    with pytest.raises(ValueError, match="calibration"):
        apply_plan_(model, plan, example_inputs=torch.zeros(1, 3, 8, 8), config=QUIET)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_activation_bits_inside_a_transformer_layer_are_refused():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.Sequential(nn.Linear(8, 16), layer).eval()
    plan = Plan({"1.linear1": LayerPlan(activations=N2UQConfig(bits=4))})
    with pytest.raises(PlanError, match="fast path"):
        apply_plan_(model, plan, calibration=torch.rand(4, 5, 8), config=QUIET)


def test_damage_inside_the_tensors_is_caught(model, tmp_path):
    student = copy.deepcopy(model)
    apply_plan_(
        student,
        Plan({"inner": LayerPlan(weights=VQConfig(k=16, m=9))}),
        calibration=torch.rand(8, 3, 8, 8),
        config=QUIET,
    )
    path = tmp_path / "m.cpz"
    export(student, path, model_spec=None)
    data = bytearray(path.read_bytes())
    data[-40:-8] = bytes(32)  # inside the last tensor's bytes; the header stays valid
    damaged = tmp_path / "damaged.cpz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="checksum"):
        load(damaged, model=PreActivation())
    assert load(path, model=PreActivation()) is not None


def test_a_file_cannot_make_load_run_code_it_names(model, tmp_path):
    student = copy.deepcopy(model)
    apply_plan_(student, Plan({}), example_inputs=torch.zeros(1, 3, 8, 8), config=QUIET)
    source = tmp_path / "arch.py"
    source.write_text(
        "import torch\nfrom torch import nn\n"
        + _source_of_preactivation()
        + "\ndef build():\n    return PreActivation()\n"
    )
    path = tmp_path / "m.cpz"
    export(student, path, model_spec=f"{source}:build")
    with pytest.raises(ExportError, match="trust_model_spec"):
        load(path)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(load(path, trust_model_spec=True)(x), student(x))


def test_keep_rounds_halves_up():
    assert (
        kept_channels(40, 0.5) == 24 and kept_channels(5, 0.5) == 3 and kept_channels(64, 0.5) == 32
    )


def _source_of_preactivation() -> str:
    import inspect

    return inspect.getsource(PreActivation)
