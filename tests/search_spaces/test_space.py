"""SearchSpace: valid choices per layer, overrides, shared keep ratios, Optuna conversion."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution

from search_spaces import (
    BitsConfig,
    Knobs,
    PlanError,
    SearchSpace,
    VQConfig,
    discover,
    validate_plan,
)
from search_spaces.plan import group_keeps


def _sample(space, n, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    plans = []
    for _ in range(n):
        trial = study.ask()
        plans.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return plans, study


@pytest.mark.parametrize("fixture", ["resnet18_graph", "mobilenet_graph"])
def test_every_sampled_plan_is_valid(fixture, request):
    graph = request.getfixturevalue(fixture)
    space = SearchSpace(graph)
    plans, _ = _sample(space, 100)
    methods = set()
    for plan in plans:
        validate_plan(plan, graph)
        ends = {graph.first_conv, graph.classifier}
        methods |= {lp.method for name, lp in plan.layers.items() if name not in ends}
        assert graph.first_conv not in plan or plan[graph.first_conv].method == "none"
        assert graph.classifier not in plan or plan[graph.classifier].method == "none"
    assert methods == {"vq", "bits"}


def test_optuna_distributions(resnet18_graph):
    space = SearchSpace(resnet18_graph)
    dists = space.to_optuna()
    assert all(isinstance(d, CategoricalDistribution) for d in dists.values())
    assert dists["layer1.0.conv1/method"].choices == ("vq", "bits")
    assert (
        dists["layer1.0.conv1/k"].choices[0] == 2 and dists["layer1.0.conv1/k"].choices[-1] == 4096
    )
    assert all(
        576 % m == 0 and 432 % m == 0 and 288 % m == 0 for m in dists["layer1.0.conv1/m"].choices
    )
    assert "conv1/method" not in dists and "fc/weight_bits" not in dists  # protected ends
    prunable = [g.id for g in resnet18_graph.groups if g.prunable]
    assert {f"group{g}/keep" for g in prunable} <= set(dists)
    assert not any(name.startswith("layer1.0.conv2/keep") for name in dists)


def test_decode_of_a_full_parameter_set(resnet18_graph):
    space = SearchSpace(resnet18_graph)
    params = {name: dist.choices[-1] for name, dist in space.to_optuna().items()}
    params["layer2.0.conv1/method"] = "vq"
    params["layer2.0.conv1/m"] = 8
    params["layer2.0.conv1/d_tilde_fraction"] = 0.25
    plan = space.decode(params)
    validate_plan(plan, resnet18_graph)
    assert plan["layer2.0.conv1"].weights == VQConfig(k=4096, m=8, d_tilde=2)
    with pytest.raises(PlanError, match="not among"):
        space.decode({"layer2.0.conv1/m": 7})


def test_coupled_layers_share_one_keep_ratio(resnet18_graph):
    space = SearchSpace(resnet18_graph)
    plans, _ = _sample(space, 30, seed=3)
    stream = ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    keeps = {tuple(plan.get(n).keep for n in stream) for plan in plans}
    assert all(len(set(k)) == 1 for k in keeps) and len(keeps) > 1
    for plan in plans:
        group_keeps(plan, resnet18_graph)  # raises on disagreement


def test_overrides_by_name_and_pattern(resnet18_graph):
    space = SearchSpace(
        resnet18_graph,
        Knobs(keep=(1.0,)),
        overrides={
            "layer4.1.conv2": {"methods": ("bits",), "weight_bits": (2,)},
            "re:layer4\\..*": Knobs(methods=("vq",), k=(256,), m=(9, 18)),
            "re:layer[123]\\..*": {"methods": ("none",), "act_bits": (8,)},
        },
    )
    assert space.layers["layer4.1.conv2"].methods == ("bits",)
    vq = space.layers["layer4.0.conv1"].of("vq")
    assert vq.k == (256,) and vq.m == (9, 18)
    # 9 and 18 do not divide the 1×1 downsample's D = 256, so VQ is dropped there, with a note
    downsample = space.layers["layer4.0.downsample.0"]
    assert downsample.methods == ("none",) and downsample.method_knobs == ()
    assert "vq: no m in [9, 18] divides" in downsample.note
    assert space.layers["layer2.0.conv1"].methods == ("none",)
    layers = resnet18_graph.layers
    assert space.group_keep[layers["layer2.0.conv1"].group] == (1.0,)
    # a full Knobs (not a dict of changes) brings its own default keep ratios
    assert space.group_keep[layers["layer4.0.conv1"].group] == (1.0, 0.75, 0.5, 0.25)
    plans, _ = _sample(space, 10)
    for plan in plans:
        assert plan["layer4.1.conv2"].weights == BitsConfig(bits=2)
        assert plan["layer4.0.conv1"].weights.k == 256
        assert plan["layer2.0.conv1"].act_bits == 8


def test_unprotected_ends_and_bad_overrides(resnet18_graph):
    assert "conv1/method" in SearchSpace(resnet18_graph, protect_ends=False).to_optuna()
    with pytest.raises(PlanError, match="matches no compressible layer"):
        SearchSpace(resnet18_graph, overrides={"re:block.*": {"k": (16,)}})
    with pytest.raises(PlanError, match=r"knobs\.k"):
        SearchSpace(resnet18_graph, Knobs(k=(3,)))
    with pytest.raises(PlanError, match="unexpected keyword"):
        SearchSpace(resnet18_graph, overrides={"fc": {"bitz": (2,)}})


def test_optuna_study_resumes_with_the_same_space(resnet18_graph, tmp_path):
    """The static space means a second process can load the study and keep sampling with TPE."""
    space = SearchSpace(resnet18_graph)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        storage=storage, study_name="s", sampler=optuna.samplers.TPESampler(seed=0)
    )
    study.optimize(lambda t: len(space.suggest(t).layers), n_trials=12)
    again = optuna.load_study(
        storage=storage, study_name="s", sampler=optuna.samplers.TPESampler(seed=1)
    )
    again.optimize(lambda t: len(space.suggest(t).layers), n_trials=3)
    assert len(again.trials) == 15
    for trial in again.trials:
        validate_plan(space.decode(trial.params), resnet18_graph)


def test_layers_inside_a_transformer_layer_offer_only_32_bit_inputs():
    # PyTorch's inference fast path reads linear1/linear2's weights and never calls them, so an
    # activation quantizer there would be skipped: the space must not offer one.
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = torch.nn.Sequential(torch.nn.TransformerEncoder(layer, 1), torch.nn.Linear(16, 4))
    graph = discover(model.eval(), torch.randn(1, 5, 16))
    space = SearchSpace(graph, protect_ends=False)
    inner = [n for n in graph.layers if n.startswith("0.layers.0.")]
    assert inner and all(space.layers[n].act_bits == (32,) for n in inner)
    assert "fast path" in space.layers[inner[0]].note
    assert len(space.layers["1"].act_bits) > 1  # outside it, quantized inputs are offered
