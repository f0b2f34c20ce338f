"""The planner: options and their sizes, the proxy, the exact solver, budgets, and searches on real
Optuna storage (SQLite and journal files) that resume and survive being killed."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from planner import Planner, PlannerError
from planner.budgets import BudgetError, parse_size
from planner.exact import InfeasibleBudget, solve_choices
from planner.options import layer_options, options_plan
from planner.proxy import proxy_table
from predictors.size import SizePredictor, size_report
from search_spaces import Budget, SearchSpace, discover
from search_spaces.methods.lr2vq import decode, lr2vq
from search_spaces.model_spec import load_model


@pytest.fixture(scope="module")
def digits():
    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    return loaded, graph


def _planner(digits, tmp_path, *, ratio=25.0, **options) -> Planner:
    loaded, graph = digits
    options.setdefault("storage", f"sqlite:///{tmp_path / 'studies.db'}")
    return Planner(
        loaded.module,
        loaded.example_inputs,
        budget=Budget(size_bytes=graph.baseline_bits / 8 / ratio),
        model_spec="zoo:digits",
        **options,
    )


# -- options, proxy, exact solver ----------------------------------------------------------------


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_option_sizes_add_up_to_the_size_predictor(resnet18_graph, keep):
    space = SearchSpace(resnet18_graph, protect_ends=False)
    keeps = {gid: keep for gid in space.group_keep}
    options = layer_options(space, keeps)
    rng = np.random.default_rng(0)
    for _ in range(10):
        chosen = {name: int(rng.integers(len(o))) for name, o in options.items()}
        plan = options_plan(space, options, chosen)
        summed = sum(int(options[n].bits[i]) for n, i in chosen.items()) + resnet18_graph.kept_bits
        assert SizePredictor(resnet18_graph).predict_bits([plan])[0] == summed


def test_vq_estimate_ranks_options_as_real_clustering_does(digits):
    loaded, graph = digits
    options = layer_options(SearchSpace(graph))
    table = proxy_table(loaded.module, options)
    rng = np.random.default_rng(0)
    estimated, real = [], []
    for name in ["blocks.1.conv2", "blocks.2.conv1"]:
        weight = loaded.module.get_submodule(name).weight.detach()
        # k ≤ 256 keeps the real k-means to a second or two.
        plans = options[name].plans
        vq = [i for i, p in enumerate(plans) if p.method == "vq" and p.weights.k <= 256]
        for i in rng.choice(vq, 8, replace=False):
            p = plans[i].weights
            result = lr2vq(weight, k=p.k, m=p.m, d_tilde=p.clustering_dim)
            approx = decode(result.codes, result.codebook, result.projection, result.shape)
            real.append(float((approx - weight).square().sum() / weight.square().sum()))
            estimated.append(table.relative_errors[name][i])
    assert spearmanr(estimated, real).statistic > 0.85
    assert 0.7 < np.median(np.array(estimated) / np.array(real)) < 1.4


def test_exact_solver_matches_brute_force_with_two_budgets():
    rng = np.random.default_rng(1)
    for _ in range(60):
        costs = {f"l{i}": rng.integers(0, 6, rng.integers(1, 5)).astype(float) for i in range(4)}
        size = {n: rng.integers(1, 8, len(c)).astype(float) for n, c in costs.items()}
        latency = {n: rng.integers(1, 8, len(c)).astype(float) for n, c in costs.items()}
        limits = {"size": float(rng.integers(4, 25)), "latency": float(rng.integers(4, 25))}
        best = None
        for combo in itertools.product(*[range(len(c)) for c in costs.values()]):
            pick = dict(zip(costs, combo, strict=True))
            if sum(size[n][i] for n, i in pick.items()) > limits["size"]:
                continue
            if sum(latency[n][i] for n, i in pick.items()) > limits["latency"]:
                continue
            value = sum(costs[n][i] for n, i in pick.items())
            best = value if best is None else min(best, value)
        uses = {"size": size, "latency": latency}
        if best is None:
            with pytest.raises(InfeasibleBudget):
                solve_choices(costs, uses, limits)
            continue
        solution = solve_choices(costs, uses, limits)
        assert solution.objective == pytest.approx(best)
        assert all(solution.totals[b] <= limits[b] for b in limits)


# -- budgets -------------------------------------------------------------------------------------


def test_size_budgets_read_as_users_write_them():
    assert parse_size("123456", 1e6) == 123456
    assert parse_size("300KiB", 1e6) == 300 * 1024
    assert parse_size("1.2MiB", 1e6) == pytest.approx(1.2 * 2**20)
    assert parse_size("2MB", 1e6) == 2e6
    assert parse_size("x25", 1e6) == 40000
    for bad in ["", "x0", "twelve", "5 parsecs", "-3"]:
        with pytest.raises(BudgetError, match="size budget"):
            parse_size(bad, 1e6)


def test_unreachable_budgets_are_refused_at_the_start(digits, tmp_path):
    with pytest.raises(BudgetError, match=r"below the smallest plan this space reaches, [0-9.]+"):
        _planner(digits, tmp_path, ratio=5000)
    loaded, _ = digits
    with pytest.raises(BudgetError, match="latency predictor"):
        Planner(loaded.module, loaded.example_inputs, budget=Budget(latency_ms=1.0))


def test_an_unreachable_budget_names_the_kept_layers_that_cap_the_ratio():
    from torch import nn

    from planner.budgets import reachable_minimum, size_refusal, what_caps_size

    class Tagger(nn.Module):
        """Most of its bytes sit in a module compplan keeps (a GRU) and a protected head."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv1d(4, 32, 3)
            self.rnn = nn.GRU(32, 64, batch_first=True)
            self.mid = nn.Linear(64, 64)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            hidden, _ = self.rnn(self.stem(x).transpose(1, 2))
            return self.head(self.mid(hidden).mean(1))

    model = Tagger()
    graph = discover(model, torch.randn(1, 4, 20))
    space = SearchSpace(graph)
    parts = what_caps_size(space)
    assert parts[0].what == "'rnn'" and parts[0].fixed and "kept as is" in parts[0].why
    assert parts[0].bits == 32 * sum(p.numel() for p in model.rnn.parameters())
    smallest = sum(part.bits for part in parts) / 8
    assert smallest == reachable_minimum(space).size_bytes  # the parts add up to the minimum
    message = size_refusal(space, smallest / 2, smallest)
    assert "most of it is 'rnn' 73.5 KiB, kept as is: GRU uses raw weight Parameter" in message
    assert "--protect-ends no" in message  # the head is protected: the other way out
    assert "smaller k" not in message  # no knob would help: it says so instead


def test_a_bad_storage_url_says_what_to_write(digits, tmp_path):
    for url, expected in [
        ("postgres://nohost/db", "cannot open storage"),
        (str(tmp_path / "plain.db"), "is not a URL"),
    ]:
        with pytest.raises(PlannerError, match=expected):
            _planner(digits, tmp_path, storage=url).search(n_trials=1)


def test_balanced_exact_keeps_every_layer_within_the_cap(digits, tmp_path):
    _, graph = digits
    ratio = 45.0
    planner = _planner(digits, tmp_path, ratio=ratio, storage="memory")
    free = planner.exact()
    for cap in (4.0, 2.0):
        balanced = planner.exact(max_layer_ratio=cap)
        assert balanced["feasible"]
        assert balanced["proxy"] >= free["proxy"] - 1e-12  # a cap can only cost proxy
        for layer in size_report(balanced["plan"], graph).layers:
            assert layer.ratio <= cap * ratio * (1 + 1e-9), (cap, layer.name, layer.ratio)
    # Without a cap the proxy's optimum squeezes some layer past 4× the overall ratio: that is
    # what the balanced candidates hedge against (if this stops holding, they cost nothing).
    assert max(layer.ratio for layer in size_report(free["plan"], graph).layers) > 4 * ratio


# -- searching -----------------------------------------------------------------------------------


def test_search_finds_a_feasible_plan_no_worse_than_the_exact_seed(digits, tmp_path):
    _, graph = digits
    planner = _planner(digits, tmp_path)
    result = planner.search(n_trials=25)
    assert len(result.trials) == 25
    plan = result.best_plan
    size = SizePredictor(graph).predict([plan])[0]
    assert size <= planner.budget.size_bytes
    assert result.best["size_bytes"] == pytest.approx(size)
    assert result.best["value"] <= result.exact["proxy"] + 1e-12
    assert planner.proxy.value(plan) == pytest.approx(result.best["value"])
    assert not result.pareto.empty and result.pareto["feasible"].all()
    # The trials that break the budget are marked so; those that keep it are not.
    over = result.trials["size_bytes"] > planner.budget.size_bytes
    assert (result.trials["feasible"] == ~over).all()


def test_balanced_repairs_the_best_trial_when_the_exact_solver_cannot_keep_the_budgets(
    digits, tmp_path
):
    from dataclasses import replace

    from planner.results import trial_params

    loaded, graph = digits
    ratio, cap = 45.0, 2.0
    # A MACs budget only pruning meets: the exact solver (keep 1) breaks it.
    budget = Budget(size_bytes=graph.baseline_bits / 8 / ratio, macs=int(0.8 * graph.total_macs))
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        budget=budget,
        storage="memory",
        model_spec="zoo:digits",
    )
    assert not planner.exact(max_layer_ratio=cap)["feasible"]
    planner.search(n_trials=60)
    feasible = [t for t in planner.open_study().trials if t.user_attrs.get("feasible")]
    best = min(feasible, key=lambda t: t.values[0])
    answer = planner.balanced(cap, trial_params(best))
    assert answer is not None and answer["feasible"]
    assert answer["proxy"] >= best.values[0] - 1e-12
    plan = planner.study_space.decode(answer["params"])
    assert any(lp.keep < 1 for lp in plan.layers.values())  # the trial's pruning is kept
    unpruned = replace(plan, layers={n: replace(lp, keep=1.0) for n, lp in plan.layers.items()})
    for layer in size_report(unpruned, graph).layers:
        assert layer.ratio <= cap * ratio * (1 + 1e-9), (layer.name, layer.ratio)


def test_refine_fine_tunes_the_proxys_best_and_the_balanced_plans_once(digits, tmp_path):
    from planner.real import RealObjective
    from zoo.tasks import get_task

    loaded, graph = digits
    task = get_task("digits")
    planner = _planner(digits, tmp_path, ratio=45.0, calibration=[task.calibration()])
    planner.search(n_trials=20)
    real = RealObjective(loaded.module, loaded.example_inputs, task, epochs=1)
    refined = planner.refine(real, candidates=2)
    labels = list(refined["trials"]["user_attrs_candidate"])
    assert [label.startswith("proxy trial") for label in labels].count(True) == 2
    assert {"balanced ×4", "balanced ×2"} <= set(labels)
    assert refined["candidate"] in labels
    assert size_report(refined["plan"], graph).size_bytes <= planner.budget.size_bytes
    assert refined["plan"].provenance["candidate"] == refined["candidate"]
    assert refined["accuracy"] == refined["trials"]["value"].max()
    # Run again (a resumed search): nothing is fine-tuned twice.
    again = planner.refine(real, candidates=2)
    assert len(again["trials"]) == len(labels)


def test_the_same_study_name_resumes(digits, tmp_path):
    first = _planner(digits, tmp_path, study="resume").search(n_trials=12)
    again = _planner(digits, tmp_path, study="resume").search(n_trials=20)
    assert len(again.trials) == 20
    kept = again.trials.set_index("number").loc[first.trials["number"], "value"]
    assert np.allclose(kept.to_numpy(), first.trials["value"].to_numpy())
    other = _planner(digits, tmp_path, study="other").search(n_trials=3)
    assert len(other.trials) == 3


def test_journal_storage_and_multi_objective_pareto(digits, tmp_path):
    planner = _planner(digits, tmp_path, storage=f"journal:{tmp_path / 'trials.log'}", pareto=True)
    result = planner.search(n_trials=30)
    assert len(result.trials) == 30
    front = result.pareto[["value", "size_bytes"]].to_numpy()
    for a, b in itertools.permutations(front, 2):  # nobody on the front beats another
        assert not (np.all(a <= b) and np.any(a < b))


@pytest.mark.slow
def test_a_killed_search_keeps_every_finished_trial_and_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    argv = [sys.executable, "-m", "planner.cli", "search", "--model", "zoo:digits"]
    argv += ["--size-budget", "x25", "--storage", storage, "--study", "killed"]
    process = subprocess.Popen(
        [*argv, "--trials", "100000", "--out", str(tmp_path / "never.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import optuna

    try:
        deadline = time.monotonic() + 120
        stored = 0
        while stored < 15 and time.monotonic() < deadline:
            time.sleep(1)
            try:
                stored = len(optuna.load_study(study_name="killed", storage=storage).trials)
            except KeyError:  # the study is not created yet
                stored = 0
        assert stored >= 15, "the search wrote no trials in two minutes"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    study = optuna.load_study(study_name="killed", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == len(study.trials) >= stored
    target = len(finished) + 5
    done = subprocess.run(
        [*argv, "--trials", str(target), "--out", str(tmp_path / "plan.json"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(optuna.load_study(study_name="killed", storage=storage).trials) == target


def test_sensitivities_weigh_layers_by_their_effect_on_the_output(digits):
    from planner.proxy import layer_sensitivities

    loaded, graph = digits
    inputs = [loaded.example_inputs[0].repeat(16, 1, 1, 1) + torch.randn(16, 1, 8, 8)]
    before = [p.detach().clone() for p in loaded.module.parameters()]
    sensitivities = layer_sensitivities(loaded.module, inputs, list(graph.layers))
    assert all(np.isfinite(v) and v > 0 for v in sensitivities.values())
    assert len(set(np.round(list(sensitivities.values()), 6))) > 1
    after = list(loaded.module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_building_the_proxy_shows_its_progress_over_the_layers(digits, capsys):
    # Seconds to minutes on a large model: the user sees it move (a bar on stderr when asked).
    from planner.proxy import layer_sensitivities

    loaded, graph = digits
    names = list(graph.layers)
    options = layer_options(SearchSpace(graph))
    layer_sensitivities(loaded.module, [loaded.example_inputs], names, progress=True)
    proxy_table(loaded.module, options, progress=True)
    shown = capsys.readouterr().err
    assert "layer sensitivities:" in shown and f"/{len(names)} [" in shown
    assert "proxy table:" in shown and shown.endswith("\r")  # the bar is gone when done
    layer_sensitivities(loaded.module, [loaded.example_inputs], names)
    assert capsys.readouterr().err == ""  # and nothing when not asked


def test_the_uniform_baseline_is_the_largest_single_k_that_fits(resnet18_graph):
    from dataclasses import replace

    from planner.presets import uniform_pq_at_size

    sizes = SizePredictor(resnet18_graph)
    target = resnet18_graph.baseline_bits / 8 / 25
    plan = uniform_pq_at_size(resnet18_graph, target)
    ks = {lp.weights.k for lp in plan.layers.values() if lp.method == "vq"}
    assert len(ks) == 1 and sizes.predict([plan])[0] <= target
    (k,) = ks
    doubled = replace(
        plan,
        layers={
            n: replace(lp, weights=replace(lp.weights, k=2 * k)) if lp.method == "vq" else lp
            for n, lp in plan.layers.items()
        },
    )
    assert sizes.predict([doubled])[0] > target
