"""The proxy measured against the output (`planner.response`, `planner.proxy.measured_proxy_table`).

The contract: on a fixed two-layer toy, a plan whose measured output distortion is clearly larger
gets a larger proxy; responses are monotone and pass through their probes; BatchNorm is
re-estimated for the probes where `apply` would do it; the distortion follows the output.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from planner.config import SearchConfig
from planner.problem import Problem
from planner.proxy import layer_sensitivities, measured_proxy_table, proxy_table
from planner.response import LayerResponse, OutputDistortion, pick_probes
from search_spaces.attention import layer_weight
from search_spaces.methods.quantizers import WeightQuantizer
from search_spaces.plan import Budget

BITS = (1, 2, 3, 4, 8)


def _toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 6))
    with torch.no_grad():  # layers of unlike scale and shape, so that they matter unalike
        model[0].weight.mul_(torch.linspace(0.2, 3.0, 32)[:, None])
    return model.eval()


def _problem(model, inputs, **knobs):
    config = SearchConfig(
        budget=Budget(),
        protect_ends=False,
        knobs={"methods": ("bits",), "weight_bits": BITS, "keep": (1.0,), "act_bits": (32,)}
        | knobs,
    )
    return Problem(model, inputs[:1], config, calibration=[])


def _measured_kl(model, inputs, chosen, options) -> float:
    """KL(original ‖ plan) of the plan's real b-bit weights on `inputs`."""
    with torch.no_grad():
        reference = F.log_softmax(model(inputs), -1)
        saved = {n: layer_weight(model, n).detach().clone() for n in chosen}
        try:
            for name, index in chosen.items():
                weight = layer_weight(model, name)
                weight.copy_(
                    WeightQuantizer(saved[name], options[name].plans[index].weights.bits)(
                        saved[name]
                    )
                )
            out = F.log_softmax(model(inputs), -1)
        finally:
            for name, weight in saved.items():
                layer_weight(model, name).copy_(weight)
    return F.kl_div(out, reference, log_target=True, reduction="batchmean").item()


def test_a_plan_that_distorts_the_output_more_gets_a_larger_proxy():
    model = _toy()
    inputs = torch.randn(512, 12, generator=torch.Generator().manual_seed(1))
    options = _problem(model, inputs).options
    table = measured_proxy_table(model, options, [inputs[:256]], distortion="kl")
    plans = [
        dict(zip(options, pair, strict=True)) for pair in itertools.product(range(5), repeat=2)
    ]
    measured = [_measured_kl(model, inputs[256:], p, options) for p in plans]
    proxies = [table.value(p) for p in plans]
    disagreements = [
        (plans[i], plans[j])
        for i, j in itertools.combinations(range(len(plans)), 2)
        if (measured[i] > 2 * measured[j] and proxies[i] <= proxies[j])
        or (measured[j] > 2 * measured[i] and proxies[j] <= proxies[i])
    ]
    assert not disagreements


def test_measured_responses_rank_plans_better_than_the_noise_sensitivity_on_the_toy():
    from scipy.stats import spearmanr

    model = _toy()
    inputs = torch.randn(512, 12, generator=torch.Generator().manual_seed(1))
    options = _problem(model, inputs).options
    calibration = [inputs[:256]]
    after = measured_proxy_table(model, options, calibration, distortion="kl")
    before = proxy_table(
        model, options, sensitivities=layer_sensitivities(model, calibration, list(options))
    )
    plans = [
        dict(zip(options, pair, strict=True)) for pair in itertools.product(range(5), repeat=2)
    ]
    measured = [_measured_kl(model, inputs[256:], p, options) for p in plans]
    rho_after = spearmanr([after.value(p) for p in plans], measured)[0]
    rho_before = spearmanr([before.value(p) for p in plans], measured)[0]
    assert rho_after >= 0.9
    assert rho_after >= rho_before - 0.02


def test_a_response_is_monotone_and_passes_through_its_probes():
    response = LayerResponse((1e-3, 1e-2, 0.3), (1e-5, 3e-4, 0.2))
    grid = np.logspace(-6, 0, 200)
    values = response(grid)
    assert np.all(np.diff(values) > 0)
    assert np.allclose(response(np.array([1e-3, 1e-2])), [1e-5, 3e-4], rtol=1e-9)
    assert response(0.0) == 0.0
    # Slopes are bounded: measurement noise between close probes cannot make it jump.
    steep = LayerResponse((1e-2, 1.1e-2), (1e-6, 1.0))
    assert steep(1.1e-2) < 1e-5
    linear = LayerResponse.linear(4.0)
    assert np.isclose(linear(0.25), 1.0)


def test_probes_spread_over_the_error_range_and_skip_options_without_a_reconstruction():
    errors = np.array([0.0, 0.36, 0.12, 0.035, 0.009, 4e-5, 0.5])
    probeable = np.array([True, True, True, True, True, True, False])
    chosen = pick_probes(errors, probeable)
    assert chosen[0] == 1 and 4 in chosen and len(chosen) == 3
    assert 6 not in chosen and 0 not in chosen and 5 not in chosen
    assert pick_probes(errors, np.zeros(len(errors), bool)) == []


def test_batchnorm_is_reestimated_for_the_probes_and_the_output_decides_the_distortion():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16, 5),
    ).eval()
    batch = torch.randn(32, 3, 4, 4)
    problem = Problem(
        model,
        batch[:1],
        SearchConfig(budget=Budget(), protect_ends=False, knobs={"methods": ("bits",)}),
        calibration=[batch],
    )
    facts = problem.proxy.table.facts
    assert facts["distortion"] == "kl" and facts["batchnorm_reestimated"]
    assert facts["probes"] >= 2
    # The model is left as it was (weights and BatchNorm statistics).
    fresh = torch.randn(4, 3, 4, 4)
    reference = model(fresh)
    assert torch.equal(model(fresh), reference)

    class Embedder(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))

        def forward(self, x):
            return {"last_hidden_state": self.body(x)[:, None, :]}

    embedder = Embedder().eval()
    inputs = torch.randn(16, 6)
    problem = Problem(
        embedder,
        inputs[:1],
        SearchConfig(budget=Budget(), protect_ends=False, knobs={"methods": ("bits",)}),
        calibration=[inputs],
    )
    assert problem.proxy.table.facts["distortion"] == "cosine"
    assert not problem.proxy.table.facts["batchnorm_reestimated"]


@pytest.mark.parametrize("kind", ["kl", "cosine", "mse"])
def test_the_output_distortion_is_zero_for_the_same_model_and_grows_with_noise(kind):
    model = _toy()
    inputs = [torch.randn(64, 12)]
    distortion = OutputDistortion(model, inputs, kind)
    assert distortion() == pytest.approx(0.0, abs=1e-12)
    values = []
    original = model[2].weight.detach().clone()
    for scale in (0.01, 0.1, 1.0):
        with torch.no_grad():
            model[2].weight.copy_(
                original
                + scale * torch.randn(original.shape, generator=torch.Generator().manual_seed(0))
            )
        values.append(distortion())
    with torch.no_grad():
        model[2].weight.copy_(original)
    assert values[0] < values[1] < values[2]
