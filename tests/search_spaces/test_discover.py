"""Discovery on the zoo models, a transformer encoder and models with layers it does not know."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import DiscoveryError, discover
from zoo.digits import INPUT_SHAPE as DIGITS_SHAPE
from zoo.digits import DigitsNet


def _convs_and_linears(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)}


def _assert_accounted(graph, model):
    total = sum(p.numel() for p in model.parameters())
    assert graph.total_params == total
    assert graph.compressible_params + graph.batchnorm_params + graph.kept_params == total
    assert graph.baseline_bits == 32 * total


@pytest.mark.parametrize("fixture", ["resnet18_graph", "resnet50_graph", "mobilenet_graph"])
def test_every_conv_and_linear_of_the_zoo_is_compressible(fixture, request):
    graph = request.getfixturevalue(fixture)
    from zoo import get

    model = get(graph.model_name.split(":")[1]).build()
    assert set(graph.layers) == _convs_and_linears(model)
    assert graph.kept == ()
    _assert_accounted(graph, model)
    assert all(spec.batchnorm for name, spec in graph.layers.items() if spec.kind == "conv2d")


def test_resnet18_layer_facts(resnet18_graph):
    conv1 = resnet18_graph.layers["conv1"]
    assert conv1.weight_shape == (64, 3, 7, 7)
    assert conv1.input_shape == (1, 3, 224, 224) and conv1.output_shape == (1, 64, 112, 112)
    assert conv1.macs == 64 * 112 * 112 * 3 * 49
    assert conv1.batchnorm == "bn1"
    assert resnet18_graph.layers["fc"].macs == 512 * 1000
    # torchvision's figure for ResNet-18 is 1.82 GMACs
    assert 1.80e9 < resnet18_graph.total_macs < 1.83e9
    assert resnet18_graph.first_conv == "conv1" and resnet18_graph.classifier == "fc"


def test_resnet18_coupling_groups_follow_the_residual_streams(resnet18_graph):
    groups = {frozenset(g.layers): g for g in resnet18_graph.groups}
    stem_stream = frozenset({"conv1", "layer1.0.conv2", "layer1.1.conv2"})
    assert stem_stream in groups
    assert set(groups[stem_stream].consumers) == {
        "layer1.0.conv1",
        "layer1.1.conv1",
        "layer2.0.conv1",
        "layer2.0.downsample.0",
    }
    for stage in (2, 3, 4):
        stream = frozenset(
            {f"layer{stage}.0.downsample.0", f"layer{stage}.0.conv2", f"layer{stage}.1.conv2"}
        )
        assert stream in groups and groups[stream].prunable
    for block in ("layer1.0", "layer2.1", "layer4.1"):
        inner = groups[frozenset({f"{block}.conv1"})]
        assert inner.consumers == (f"{block}.conv2",) and inner.prunable
    fc = groups[frozenset({"fc"})]
    assert not fc.prunable and "output" in fc.reason
    # every layer belongs to exactly one group
    members = [n for g in resnet18_graph.groups for n in g.layers]
    assert sorted(members) == sorted(resnet18_graph.layers)
    assert len(resnet18_graph.groups) == 13
    assert resnet18_graph.layers["fc"].inputs[0].multiplicity == 1


def test_mobilenet_depthwise_convs_share_their_input_group(mobilenet_graph):
    dw = mobilenet_graph.layers["features.2.conv.1.0"]
    assert dw.is_depthwise and dw.groups == 96
    expand = mobilenet_graph.layers["features.2.conv.0.0"]
    assert dw.group == expand.group
    assert dw.inputs[0].group == dw.group
    project = mobilenet_graph.layers["features.2.conv.2"]
    assert project.inputs[0].group == dw.group
    # inverted residuals with a skip tie the projections of one stage together
    assert (
        mobilenet_graph.layers["features.4.conv.2"].group
        == mobilenet_graph.layers["features.5.conv.2"].group
    )


def test_digits_model():
    model = DigitsNet()
    graph = discover(model, torch.randn(*DIGITS_SHAPE), model_name="zoo:digits")
    assert set(graph.layers) == _convs_and_linears(model)
    assert sum(s.kind == "conv2d" for s in graph.layers.values()) >= 8
    assert any(g.prunable and len(g.layers) > 1 for g in graph.groups)
    _assert_accounted(graph, model)


def test_transformer_encoder_splits_attention_into_compressible_projections():
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.TransformerEncoder(layer, num_layers=2), nn.Linear(32, 5)
    )
    keys = set(model.state_dict())
    graph = discover(model, torch.randn(2, 10, 16))
    linears = {f"1.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)}
    projections = {f"1.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("in_proj", "out_proj")}
    assert linears | projections | {"0", "2"} == set(graph.layers)
    assert graph.layers["1.layers.0.linear1"].macs == 10 * 32 * 64
    in_proj = graph.layers["1.layers.0.self_attn.in_proj"]
    assert in_proj.weight_shape == (96, 32) and in_proj.macs == 10 * 32 * 96
    assert not in_proj.quantizable_inputs  # the encoder layer's fast path skips quantizers
    kept = {m.name: m for m in graph.kept}
    assert "LayerNorm" in kept["1.layers.1.norm2"].reason
    _assert_accounted(graph, model)
    assert set(model.state_dict()) == keys  # discovery leaves the user's model as it was
    assert isinstance(model[1].layers[0].self_attn, nn.MultiheadAttention)
    # the feed-forward hidden width is prunable; the residual width is tied to LayerNorm
    assert graph.group_of("1.layers.0.linear1").prunable
    residual = graph.group_of("0")
    assert not residual.prunable and "LayerNorm" in residual.reason


def test_attention_with_other_key_sizes_is_kept_with_its_reason():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, kdim=16, vdim=16, batch_first=True)

        def forward(self, x):
            return self.attn(x, x[..., :16], x[..., :16], need_weights=False)[0]

    graph = discover(Cross(), torch.randn(2, 5, 32))
    kept = {m.name: m for m in graph.kept}
    assert "kdim/vdim" in kept["attn"].reason
    _assert_accounted(graph, Cross())


def test_embeddings_are_compressible_tables_with_token_id_inputs():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Embedding(100, 16, padding_idx=0)
            self.norm = nn.Embedding(10, 16, max_norm=1.0)
            self.head = nn.Linear(16, 4)

        def forward(self, ids):
            return self.head((self.tokens(ids) + self.norm(ids % 10)).mean(1))

    graph = discover(Encoder(), torch.randint(0, 100, (2, 7)))
    tokens = graph.layers["tokens"]
    assert tokens.kind == "embedding" and tokens.weight_shape == (100, 16)
    assert tokens.row_length == 16 and tokens.group is None and not tokens.quantizable_inputs
    assert tokens.macs == 7 * 16  # one copy per element looked up
    assert "max_norm" in {m.name: m for m in graph.kept}["norm"].reason
    _assert_accounted(graph, Encoder())


class _CustomConv(nn.Module):
    """A layer compplan does not know: a raw Parameter used through the functional API."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(8, 3, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.kernel, padding=1)


class _WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.custom = _CustomConv()
        self.norm = nn.GroupNorm(2, 8)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.shared = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.bn(self.conv(self.norm(self.custom(x)))).mean((2, 3))
        return self.head(self.shared(self.shared(y)))


def test_unknown_layers_are_kept_with_their_reason():
    model = _WithCustom()
    graph = discover(model, torch.randn(1, 3, 8, 8))
    assert set(graph.layers) == {"conv", "head"}
    kept = {m.name: m.reason for m in graph.kept}
    assert "'kernel'" in kept["custom"]
    assert "GroupNorm is not a layer type" in kept["norm"]
    assert "called 2 times" in kept["shared"]
    assert graph.layers["conv"].batchnorm == "bn"
    _assert_accounted(graph, model)


class _TraceBreaker(nn.Module):
    """Runs without autograd but refuses the dependency tracer's forward pass."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("tracing not supported")
        return self.b(self.a(x))


def test_failed_trace_keeps_layers_but_disables_pruning():
    graph = discover(_TraceBreaker(), torch.randn(1, 3, 8, 8))
    assert set(graph.layers) == {"a", "b"}
    assert "tracing not supported" in graph.trace_error
    assert graph.groups == () and all(s.group is None for s in graph.layers.values())


def test_model_that_does_not_run_is_a_clear_error():
    with pytest.raises(DiscoveryError, match=r"shape \(1, 5, 8, 8\).*--input-shape"):
        discover(_TraceBreaker(), torch.randn(1, 5, 8, 8))


def test_conv1d_grouped_and_returned_features():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(4, 32, 5)
            self.bn = nn.BatchNorm1d(32)
            self.b = nn.Conv1d(32, 32, 3, groups=4)
            self.c = nn.Conv1d(32, 16, 1)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            features = self.c(self.b(torch.relu(self.bn(self.a(x)))))
            return self.head(features.mean(2)), features

    graph = discover(Net(), torch.randn(2, 4, 50))
    assert graph.layers["a"].kind == "conv1d" and graph.layers["a"].batchnorm == "bn"
    assert graph.layers["a"].macs == 32 * 46 * 4 * 5
    assert graph.layers["b"].row_length == 8 * 3
    assert "grouped conv 'b'" in graph.group_of("a").reason
    assert "output" in graph.group_of("c").reason


def test_discovery_leaves_the_model_as_it_was():
    model = DigitsNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discover(model, torch.randn(*DIGITS_SHAPE))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fingerprint_depends_on_shapes_not_inputs(resnet18_graph):
    from zoo.resnet import resnet18

    other_input = discover(resnet18(), torch.randn(1, 3, 64, 64))
    assert other_input.fingerprint == resnet18_graph.fingerprint
    narrower = discover(resnet18(num_classes=10), torch.randn(1, 3, 64, 64))
    assert narrower.fingerprint != resnet18_graph.fingerprint


def test_a_linear_its_parent_calls_functionally_is_compressible_without_input_bits():
    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(8, 16)
            self.proj = nn.Linear(16, 4)

        def forward(self, x):
            return F.linear(torch.relu(self.stem(x)), self.proj.weight, self.proj.bias)

    graph = discover(Parent(), torch.randn(3, 8))
    assert list(graph.layers) == ["stem", "proj"]  # in the order the forward pass uses them
    proj = graph.layers["proj"]
    assert proj.macs == 16 * 4 and proj.output_shape == (3, 4)
    assert not proj.quantizable_inputs and graph.layers["stem"].quantizable_inputs
