"""Latency: layer configurations, profiling records, and the three predictors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from support.latency import OVERHEAD_MS, known_latency, known_records
from torch import nn

from engine.deploy import deployed_structure
from predictors.latency import (
    FEATURE_NAMES,
    FlopsPredictor,
    LatencyBatch,
    LatencyNetwork,
    LookupTablePredictor,
    PredictorError,
    ProfileError,
    RecordsError,
    features,
    load_predictor,
    load_records,
    profile,
    profile_layers,
    profiling,
    random_plans,
    save_records,
    structured_plans,
    synthetic_layer_configs,
)
from predictors.latency.features import plan_layer_configs
from predictors.latency.profiling import STRUCTURED_KEEPS
from predictors.latency.records import DEPLOYED_FORM
from predictors.profile import BLOCKS
from predictors.size import layer_bits
from search_spaces import LayerPlan, N2UQConfig, Plan, PlanError, SearchSpace, discover
from search_spaces.model_spec import load_model

DIGITS = "zoo:digits"


@pytest.fixture(scope="module")
def digits():
    loaded = load_model(DIGITS, pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name=DIGITS)
    return loaded, graph


@pytest.fixture(scope="module")
def digits_plans(digits):
    _, graph = digits
    return random_plans(SearchSpace(graph), 60, seed=3)


@pytest.fixture(scope="module")
def measured(digits_plans):
    """Real records of 6 digits plans and their layers, measured in this process."""
    # BLOCKS blocks whatever they last (min_time_ms=0): the records' form, not their precision.
    return profile(
        DIGITS,
        plans=digits_plans[:6],
        structured=False,
        processes=0,
        progress=False,
        min_time_ms=0,
        runtime="torch",
    )


# -- configurations -----------------------------------------------------------------------------


def test_layer_configs_match_the_deployed_modules(digits, digits_plans):
    loaded, graph = digits
    configs = plan_layer_configs(graph, digits_plans[:8])
    names = list(graph.layers)
    for i, plan in enumerate(digits_plans[:8]):
        model = deployed_structure(loaded.module, plan, loaded.example_inputs, graph=graph)
        for j, name in enumerate(names):
            module = model.get_submodule(name)
            layer = module[-1] if isinstance(module, nn.Sequential) else module
            quantized = isinstance(module, nn.Sequential)
            assert configs.c_out[i, j] == layer.weight.shape[0], (plan, name)
            assert configs.c_in[i, j] == layer.weight.shape[1] * getattr(layer, "groups", 1)
            assert (configs.act_bits[i, j] < 32) == quantized


def test_channels_agree_with_the_size_model(mobilenet_graph):
    plans = random_plans(SearchSpace(mobilenet_graph), 40, seed=1)
    batch = LatencyBatch.from_plans(mobilenet_graph, plans)
    configs = plan_layer_configs(mobilenet_graph, batch)
    bits = layer_bits(mobilenet_graph, batch.plans)
    assert (configs.c_out == bits["c_out"]).all() and (configs.c_in == bits["c_in"]).all()
    depthwise = [s.is_depthwise for s in mobilenet_graph.layers.values()]
    assert (configs.groups[:, depthwise] == configs.c_out[:, depthwise]).all()
    assert configs.macs[:, depthwise].max() > 0


def test_unique_gives_back_every_configuration(mobilenet_graph):
    plans = random_plans(SearchSpace(mobilenet_graph), 200, seed=2)
    configs = plan_layer_configs(mobilenet_graph, plans)
    unique, inverse = configs.unique()
    assert len(unique.kind) < configs.kind.size
    again = unique.take(inverse).reshape(*configs.shape)
    for name, column in configs.columns().items():
        assert (again.columns()[name] == column).all(), name


def test_features_are_finite_and_named():
    configs = synthetic_layer_configs(50, seed=0)
    x = features(configs)
    assert x.shape == (50, len(FEATURE_NAMES)) and np.isfinite(x).all()
    depthwise = x[:, FEATURE_NAMES.index("depthwise")] == 1
    assert depthwise.any() and (configs.groups[depthwise] == configs.c_in[depthwise]).all()


def test_random_plans_span_light_to_heavy_compression(digits):
    _, graph = digits
    plans = random_plans(SearchSpace(graph), 40, seed=0)
    pruned = [sum(lp.keep < 1 for lp in p.layers.values()) for p in plans]
    assert min(pruned) == 0 and max(pruned) >= len(graph.layers) // 2
    assert random_plans(SearchSpace(graph), 5, seed=7) == random_plans(
        SearchSpace(graph), 5, seed=7
    )


# -- profiling and records -----------------------------------------------------------------------


def test_profile_records_plans_and_their_layers(measured, digits, digits_plans):
    _, graph = digits
    models = measured[measured["record"] == "model"]
    layers = measured[measured["record"] == "layer"]
    assert len(models) == 6
    unique, _ = plan_layer_configs(graph, digits_plans[:6]).alone().unique()
    assert len(layers) == len(unique.kind)
    # BLOCKS blocks of at least 3 calls; a fast layer takes more, to fill its blocks.
    assert (measured["latency_ms"] > 0).all() and (measured["runs"] >= 3 * BLOCKS).all()
    assert (layers["runs"] > 3 * BLOCKS).any()
    # Each figure is a ratio to its reference, in ms through that reference's time over the run.
    assert set(models["reference"]) == {"model"} and set(layers["reference"]) == {"calibration"}
    for _, group in measured.groupby("reference"):
        assert group["reference_ms"].nunique() == 1
        assert np.allclose(group["latency_ms"], group["ratio"] * group["reference_ms"])
    # And in one unit for all: the calibration module's, through the model's measured link to it.
    link = models["reference_units"]
    assert link.nunique() == 1 and link.iloc[0] > 0 and (layers["reference_units"] == 1).all()
    assert np.allclose(measured["units"], measured["ratio"] * measured["reference_units"])
    assert set(measured["device"]) == {"cpu"} and set(measured["threads"]) == {1}
    assert set(measured["torch"]) == {torch.__version__} and set(measured["runtime"]) == {"torch"}
    assert (models["input_shape"] == "1x1x8x8").all() and (models["input_dtype"] == "float32").all()


def test_structured_plans_are_uniform_keeps_with_and_without_8_bit_inputs(digits):
    _, graph = digits
    space = SearchSpace(graph)
    plans = structured_plans(space)
    assert len(plans) == 2 * len(STRUCTURED_KEEPS)
    expected = [(k, b) for k in STRUCTURED_KEEPS for b in (32, 8)]
    for plan, (keep, bits) in zip(plans, expected, strict=True):
        assert plan.provenance["source"] == f"structured:keep={keep:g},act_bits={bits}"
        for gid, choices in space.group_keep.items():
            nearest = min(choices, key=lambda r: abs(r - keep))
            group = next(g for g in graph.groups if g.id == gid)
            assert all(plan.get(n).keep == nearest for n in group.layers)
        quantized = {n for n, lp in plan.layers.items() if lp.act_bits == 8}
        takes_8 = {n for n, c in space.layers.items() if 8 in c.act_bits}
        assert quantized == (takes_8 if bits == 8 else set())
        assert all(lp.weights is None for lp in plan.layers.values())  # weights stay dense


def test_pruned_plans_measure_faster():
    from planner.presets import make_preset

    loaded = load_model(DIGITS, input_shape="32,1,8,8", pretrained=False)
    graph = discover(loaded.module, loaded.example_inputs, model_name=DIGITS)
    plans = [make_preset(graph, "bits:32", model=DIGITS), make_preset(graph, "keep:0.25")]
    records = profile(
        DIGITS,
        input_shape="32,1,8,8",
        plans=plans,
        structured=False,
        processes=0,
        progress=False,
        layers=False,
        runtime="torch",
    )
    assert list(records["input_shape"]) == ["32x1x8x8"] * 2
    full, pruned = records["ratio"]
    assert records["macs"][0] > 10 * records["macs"][1]
    assert full > 1.5 * pruned, (full, pruned)
    assert 0.7 < full < 1.3  # the uncompressed plan against the uncompressed model


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_records_round_trip(measured, tmp_path, suffix):
    path = save_records(measured, tmp_path / f"records{suffix}")
    loaded = load_records(path)
    assert len(loaded) == len(measured)
    assert list(loaded["plan"]) == list(measured["plan"])
    assert np.allclose(loaded["latency_ms"], measured["latency_ms"])
    layers = loaded[loaded["record"] == "layer"]
    assert (layers["c_out"].astype(float) == measured[measured["record"] == "layer"]["c_out"]).all()


def test_bad_records_files_say_why(tmp_path, measured):
    with pytest.raises(RecordsError, match=r"parquet or \.csv"):
        save_records(measured, tmp_path / "records.txt")
    with pytest.raises(RecordsError, match="no such records file"):
        load_records(tmp_path / "absent.parquet")
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(RecordsError, match="missing columns"):
        load_records(tmp_path / "other.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(RecordsError, match="cannot read"):
        load_records(tmp_path / "broken.parquet")
    edited = measured.astype({"latency_ms": object})
    edited.loc[edited.index[1], "latency_ms"] = "fast"
    edited.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(RecordsError, match=r"'latency_ms' holds 'fast' .* not a positive number"):
        load_records(tmp_path / "text.csv")


def test_profile_in_a_fresh_process(digits_plans):
    records = profile(
        DIGITS,
        plans=digits_plans[:2],
        structured=False,
        processes=1,
        layers=False,
        progress=False,
        runtime="torch",
    )
    assert len(records) == 2 and (records["latency_ms"] > 0).all()


def test_a_plan_for_another_model_is_refused_before_measuring(resnet18_graph):
    wrong = random_plans(SearchSpace(resnet18_graph), 1, seed=0)
    with pytest.raises(PlanError):
        profile(DIGITS, plans=wrong, processes=1, layers=False, progress=False)


def test_a_failing_measuring_process_is_reported(resnet18_graph):
    wrong = random_plans(SearchSpace(resnet18_graph), 1, seed=0)[0]
    settings = {
        "model": DIGITS,
        "input_shape": [1, 1, 8, 8],
        "device": "cpu",
        "threads": 1,
        "blocks": 4,
        "calls": 1,
        "warmup": 1,
        "rounds": 2,
    }
    with pytest.raises(ProfileError, match="measuring process failed: PlanError"):
        profiling._run_jobs([{"plan": wrong.to_json()}], settings, 1, lambda: None)


def test_profile_refuses_bad_settings():
    with pytest.raises(ValueError, match="at least 4 blocks"):
        profile(DIGITS, samples=1, blocks=3, processes=0, progress=False)
    with pytest.raises(ValueError, match="cpu"):
        profile(DIGITS, samples=1, device="tpu", processes=0, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ProfileError, match="no CUDA"):
            profile(DIGITS, samples=1, device="cuda", processes=0, progress=False)


def test_profile_layers_times_synthetic_layers():
    records = profile_layers(synthetic_layer_configs(4, seed=1), processes=0, progress=False)
    assert len(records) == 4 and (records["record"] == "layer").all()
    assert (records["latency_ms"] > 0).all() and (records["model"] == "synthetic").all()


# -- predictors on records with a known answer ----------------------------------------------------


@pytest.fixture(scope="module")
def known(digits, digits_plans):
    _, graph = digits
    train, test = digits_plans[:45], digits_plans[45:]
    configs = plan_layer_configs(graph, test)
    truth = known_latency(configs).sum(axis=1) + OVERHEAD_MS
    return graph, known_records(graph, train), test, truth


def _error(predicted, truth) -> np.ndarray:
    return np.abs(predicted / truth - 1)


def test_lookup_table_is_exact_on_known_layers(known, digits_plans):
    graph = known[0]
    everything = known_records(graph, digits_plans)
    predictor = LookupTablePredictor().fit(everything)
    truth = everything[everything["record"] == "model"]["latency_ms"].to_numpy()
    assert _error(predictor.predict(graph, digits_plans), truth).max() < 1e-9
    assert predictor.misses == 0


def test_records_in_calibration_units_agree_across_the_phases_of_their_runs(known, digits_plans):
    # The plans were measured while the machine ran 30% slower than for the layers: their
    # milliseconds disagree with the layers', their calibration units do not.
    graph = known[0]
    slow = known_records(graph, digits_plans, model_phase=1.3)
    truth = slow[slow["record"] == "model"]["ratio"].to_numpy()
    in_units = LookupTablePredictor().fit(slow)
    assert in_units.unit == "units" and in_units.unit_ms == pytest.approx(1.0)
    assert _error(in_units.predict_ratio(graph, digits_plans), truth).max() < 1e-9
    # Milliseconds of an older compplan's records carry the phase into the fit.
    old_records = known_records(graph, digits_plans, model_phase=1.3, units=False)
    in_ms = LookupTablePredictor().fit(old_records)
    assert in_ms.unit == "latency_ms" and in_ms.unit_ms == 1.0
    assert _error(in_ms.predict_ratio(graph, digits_plans), truth).max() > 0.01
    # Either way a seen model is priced through the reference measured with its plans.
    assert in_units.reference_ms(graph) == (pytest.approx(slow["reference_ms"].iloc[0]), "measured")


_TOKEN_MODEL = """
from torch import nn

def build():
    return nn.Sequential(nn.Embedding(100, 16), nn.Flatten(), nn.Linear(16 * 12, 4))
"""


def test_records_of_a_token_id_model_rebuild_its_graph_on_ids(tmp_path):
    # Fitting rediscovers each model the records name; a user's model of token ids must get
    # ids, not the random floats a shape alone would give it.
    source = tmp_path / "tokens.py"
    source.write_text(_TOKEN_MODEL)
    spec = f"{source}:build"
    ids = torch.zeros(1, 12, dtype=torch.int64)
    loaded = load_model(spec, inputs=ids)
    graph = discover(loaded.module, loaded.example_inputs, model_name=spec)
    plans = random_plans(SearchSpace(graph), 6, seed=0)
    records = known_records(graph, plans, model=spec, input_shape="1x12")
    records["input_dtype"] = "int64"
    predictor = FlopsPredictor().fit(records, trust_specs=True)  # rebuilt from the spec
    assert np.isfinite(predictor.predict_ratio(graph, plans)).all()


def test_network_learns_a_device(known):
    graph, records, test, truth = known
    network = LatencyNetwork(steps=800).fit(records)
    error = _error(network.predict(graph, test), truth)
    assert np.mean(error <= 0.10) >= 0.9, error
    assert network.training_log[-1]["loss"] < network.training_log[0]["loss"]


def test_network_prices_a_quantizer_on_a_layer_kind_never_quantized_in_its_records(digits):
    """The activation quantizer is priced from its input's elements and bits alone, so its cost
    learned on conv layers carries to a Linear whose input no record quantized."""
    _, graph = digits
    linears = {name for name, spec in graph.layers.items() if spec.kind == "linear"}

    def unquantized_linears(plan: Plan) -> Plan:
        layers = {
            name: replace(layer, activations=None) if name in linears else layer
            for name, layer in plan.layers.items()
        }
        return Plan(layers=layers)

    plans = [unquantized_linears(p) for p in random_plans(SearchSpace(graph), 40, seed=5)]
    network = LatencyNetwork(steps=800, quantizer_by_elements=True)
    network.fit(known_records(graph, plans))
    bits = N2UQConfig(bits=4)
    plain = Plan(layers={})
    quantized = Plan(layers={name: LayerPlan(activations=bits) for name in linears})
    plain_ms, quantized_ms = network.predict(graph, [plain, quantized])
    truth = 0.1 * len(linears)  # the made-up device: 0.1 ms per quantized input
    assert quantized_ms - plain_ms == pytest.approx(truth, rel=0.25)


def test_a_version_2_network_file_loads_as_an_ensemble_of_one(known, tmp_path):
    graph, records, test, _ = known
    network = LatencyNetwork(steps=50, members=1).fit(records)
    document = network.to_document()
    document["version"] = 2  # as the compplan before ensembles wrote it: no "members." prefix
    tensors = document["state"]["tensors"]
    document["state"]["tensors"] = {k.removeprefix("members.0."): v for k, v in tensors.items()}
    del document["state"]["config"]["members"]
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(document))
    loaded = load_predictor(path)
    assert loaded.config["members"] == 1
    np.testing.assert_allclose(loaded.predict(graph, test), network.predict(graph, test))


def test_flops_baseline_fits_a_linear_device(digits, digits_plans):
    _, graph = digits
    configs = plan_layer_configs(graph, digits_plans)
    macs = configs.macs.sum(axis=1)
    records = known_records(graph, digits_plans)
    for column in ("latency_ms", "units"):  # the calibration module takes 1 ms
        records.loc[records["record"] == "model", column] = 3e-6 * macs + 0.2
    predictor = FlopsPredictor().fit(records)
    assert predictor.ms_per_mac == pytest.approx(3e-6, rel=1e-6)
    assert predictor.offset_ms == pytest.approx(0.2, rel=1e-6)


def test_predictors_refuse_what_they_cannot_use(known, tmp_path):
    graph, records, test, _ = known
    other = records.copy()
    other.loc[other.index[:3], "cpu"] = "another cpu"
    with pytest.raises(PredictorError, match="2 devices"):
        LatencyNetwork(steps=5).fit(other)
    with pytest.raises(PredictorError, match="single-layer records"):
        LookupTablePredictor().fit(records[records["record"] == "model"])
    with pytest.raises(PredictorError, match="not fit"):
        FlopsPredictor().predict(graph, test)
    with pytest.raises(PredictorError, match="no such predictor"):
        load_predictor(tmp_path / "absent.json")
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(PredictorError, match="not a compplan latency predictor"):
        load_predictor(tmp_path / "x.json")
    path = FlopsPredictor().fit(records).save(tmp_path / "flops.json")
    document = json.loads(path.read_text())
    document["version"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(PredictorError, match="version 99"):
        load_predictor(path)


def test_lookup_table_prices_a_missing_configuration_by_macs(known, digits_plans):
    graph, records, _, _ = known
    layers = records[records["record"] == "layer"]
    half = pd.concat([records[records["record"] == "model"], layers.iloc[::2]])
    predictor = LookupTablePredictor().fit(half)
    predicted = predictor.predict(graph, digits_plans)
    assert predictor.misses > 0 and np.isfinite(predicted).all() and (predicted > 0).all()


def test_real_records_fit_every_predictor(measured, digits):
    _, graph = digits
    models = measured[measured["record"] == "model"]
    from search_spaces.plan import Plan

    plans = [Plan.from_json(p) for p in models["plan"]]
    for predictor in (FlopsPredictor(), LookupTablePredictor(), LatencyNetwork(steps=1500)):
        predicted = predictor.fit(measured).predict(graph, plans)
        assert np.isfinite(predicted).all() and (predicted > 0).all()
        # Within a factor of 2 of what was measured, on the plans it was fit on.
        assert np.all(np.abs(np.log(predicted / models["latency_ms"].to_numpy())) < np.log(2))


def test_records_of_an_older_deployed_form_warn_and_do_not_mix(measured, tmp_path, caplog):
    """Records profiled before BatchNorms were merged into their convolutions (no
    `deployed_form` column) time a slower form: fitting them says so, mixing them is refused."""
    assert set(measured["deployed_form"]) == {DEPLOYED_FORM}
    older = save_records(measured.drop(columns="deployed_form"), tmp_path / "older.parquet")
    current = save_records(measured, tmp_path / "current.parquet")
    with caplog.at_level("WARNING", logger="compplan"):
        LookupTablePredictor().fit(load_records(current))
    assert "deployed_form" not in caplog.text
    with caplog.at_level("WARNING", logger="compplan"):
        LookupTablePredictor().fit(load_records(older))
    assert "profile them again" in caplog.text
    with pytest.raises(PredictorError, match="2 deployed forms"):
        LookupTablePredictor().fit(load_records(older, current))
