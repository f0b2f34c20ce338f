"""`compplan profile`, `fit-latency` and `predict-latency` as a user runs them."""

from __future__ import annotations

import json

import pytest

from planner.cli import main

TORCH = ["--runtime", "torch"]  # these read the records' form; `test_onnxruntime_...` the runtime


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("latency") / "digits.parquet"
    argv = ["profile", "--model", "zoo:digits", "--samples", "8", "--processes", "0", *TORCH]
    # BLOCKS blocks whatever they last: these tests read the records' form, not their precision.
    argv += ["--min-time-ms", "0"]
    assert main([*argv, "--synthetic-layers", "3", "--out", str(path), "--json"]) == 0
    return path


def test_profile_writes_records_and_says_what_it_measured(records, capsys):
    from predictors.latency import load_records

    frame = load_records(records)
    models = frame[frame["record"] == "model"]
    assert len(models) == 8 + 12  # the random plans, then the structured ones
    assert (models["reference"] == "model").all() and (models["ratio"] > 0).all()
    assert (frame["model"] == "synthetic").sum() == 3
    assert (
        main(
            [
                "profile",
                "--model",
                "zoo:digits",
                "--samples",
                "2",
                "--processes",
                "0",
                "--no-layers",
                "--no-structured",
                *TORCH,
                "--out",
                str(records.with_suffix(".csv")),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "measured 2 plans of zoo:digits" in out and "compplan fit-latency" in out


@pytest.mark.parametrize("kind", ["network", "lookup", "flops"])
def test_fit_then_predict(records, tmp_path, capsys, kind):
    predictor = tmp_path / f"{kind}.json"
    assert (
        main(
            ["fit-latency", str(records), *TORCH, "--kind", kind, "--out", str(predictor), "--json"]
        )
        == 0
    )
    fitted = _json(capsys)
    assert fitted["plans"] == 20 and fitted["holdout"]["plans"] == 4
    assert 0 <= fitted["holdout"]["within_10pct"] <= 1 and fitted["device"]["device"] == "cpu"
    argv = ["predict-latency", "--predictor", str(predictor), "--model", "zoo:digits", *TORCH]
    assert main([*argv, "--preset", "keep:0.5", "--json"]) == 0
    half = _json(capsys)
    assert main([*argv, "--preset", "bits:4", "--json"]) == 0
    full = _json(capsys)
    # The ratio is the figure; the ms are it times the reference measured with the records.
    assert full["reference"] == half["reference"] == "measured"
    assert full["latency_ms"] == pytest.approx(full["ratio"] * full["reference_ms"])
    # Weights decode to dense, so 4-bit weights deploy, and are priced, as the uncompressed
    # model is.
    assert full["ratio"] == pytest.approx(1.0, abs=1e-9)
    assert half["latency_ms"] > 0
    if kind != "lookup":  # the table may price an unprofiled shape by MACs alone
        assert half["ratio"] < full["ratio"]


def test_a_model_the_records_do_not_hold_is_predicted_with_a_warning(
    records, tmp_path, capsys, caplog, monkeypatch
):
    import predictors.latency.predictor as models

    monkeypatch.setattr(models, "_warned_extrapolated", set())  # as in a fresh process
    predictor = tmp_path / "flops.json"
    assert (
        main(["fit-latency", str(records), *TORCH, "--kind", "flops", "--out", str(predictor)]) == 0
    )
    capsys.readouterr()
    argv = [
        "predict-latency",
        "--predictor",
        str(predictor),
        "--preset",
        "keep:0.5",
        "--json",
        *TORCH,
    ]
    with caplog.at_level("WARNING", logger="compplan"):
        assert main([*argv, "--model", "zoo:digits"]) == 0
    assert _json(capsys)["reference"] == "measured" and "records hold no plan" not in caplog.text
    with caplog.at_level("WARNING", logger="compplan"):
        assert main([*argv, "--model", "zoo:mnist1d"]) == 0
    assert _json(capsys)["reference"] == "predicted"
    assert "records hold no plan of zoo:mnist1d" in caplog.text
    assert "--uncompressed-only" in caplog.text


def test_the_warning_s_advice_one_uncompressed_record_makes_the_model_measured(
    records, tmp_path, capsys, caplog, monkeypatch
):
    import predictors.latency.predictor as models
    from predictors.latency import load_records

    monkeypatch.setattr(models, "_warned_extrapolated", set())  # as in a fresh process
    own = tmp_path / "mnist1d.parquet"
    argv = ["profile", "--model", "zoo:mnist1d", "--uncompressed-only", "--out", str(own), *TORCH]
    assert main([*argv, "--processes", "0", "--min-time-ms", "0"]) == 0
    out = capsys.readouterr().out
    # One record fits nothing alone: the next command puts it beside other models' records.
    assert "measured 1 plan of zoo:mnist1d" in out and f"OTHER_MODELS.parquet ... {own}" in out
    frame = load_records(own)
    assert list(frame["record"]) == ["model"]  # one plan, no single layers
    assert json.loads(frame["plan"].iloc[0])["layers"] == {}
    assert 0.5 < frame["ratio"].iloc[0] < 2  # the uncompressed model against itself
    predictor = tmp_path / "flops.json"
    assert (
        main(
            [
                "fit-latency",
                str(records),
                str(own),
                *TORCH,
                "--kind",
                "flops",
                "--out",
                str(predictor),
            ]
        )
        == 0
    )
    capsys.readouterr()
    argv = ["predict-latency", "--predictor", str(predictor), "--model", "zoo:mnist1d", *TORCH]
    with caplog.at_level("WARNING", logger="compplan"):
        assert main([*argv, "--preset", "keep:0.5", "--json"]) == 0
    assert _json(capsys)["reference"] == "measured" and "records hold no plan" not in caplog.text
    # It measures one plan: the user's plan files are another request.
    conflicting = ["profile", "--model", "zoo:mnist1d", "--uncompressed-only", "--plan", "p.json"]
    assert main([*conflicting, "--out", str(own)]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_a_network_for_other_models_saves_its_quantizer_head(records, tmp_path, capsys):
    predictor = tmp_path / "others.json"
    argv = ["fit-latency", str(records), "--out", str(predictor), "--holdout", "0", *TORCH]
    assert main([*argv, "--for-other-models"]) == 0
    state = json.loads(predictor.read_text())["state"]
    assert state["config"]["quantizer_by_elements"] is True
    assert any(".quantizer." in name for name in state["tensors"])
    capsys.readouterr()
    assert main([*argv, "--for-other-models", "--kind", "lookup"]) == 2
    assert "setting of the network" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit-latency", "absent.parquet", "--out", "p.json"], "no such records file"),
        (["fit-latency", "x.txt", "--out", "p.json"], "parquet or .csv"),
        (
            [
                "predict-latency",
                "--predictor",
                "absent.json",
                "--model",
                "zoo:digits",
                "--preset",
                "bits:4",
            ],
            "no such predictor file",
        ),
        (["profile", "--model", "zoo:digits", "--out", "r.txt"], "parquet or .csv"),
        (["profile", "--model", "zoo:digits", "--out", "r.csv", "--blocks", "3"], "at least 4"),
        (
            ["profile", "--model", "zoo:digits", "--out", "r.csv", "--device", "tpu"],
            "'cpu' or 'cuda",
        ),
        (["profile", "--model", "zoo:nope", "--out", "r.csv"], "nope"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compplan: error:") and message in err


def test_records_from_two_devices_are_refused(records, tmp_path, capsys):
    from predictors.latency import load_records, save_records

    frame = load_records(records)
    frame.loc[frame.index[0], "threads"] = 2
    save_records(frame, tmp_path / "mixed.parquet")
    assert main(["fit-latency", str(tmp_path / "mixed.parquet"), "--out", "p.json", *TORCH]) == 2
    assert "fit one per device" in capsys.readouterr().err


def test_an_unnamed_graph_is_told_to_take_the_name_its_records_use(
    records, tmp_path, caplog, monkeypatch
):
    """In Python a graph discovered without a name matches no records; the warning says how
    to name it, and so named it is the measured model."""
    import predictors.latency.predictor as models
    from planner import Planner
    from predictors.latency import fit_predictor, load_records
    from search_spaces import Budget
    from search_spaces.model_spec import load_model

    monkeypatch.setattr(models, "_warned_extrapolated", set())  # as in a fresh process
    predictor = fit_predictor(load_records(records), "flops", holdout=0).predictor
    loaded = load_model("zoo:digits")
    budget = Budget(latency_ms=1e3)
    with caplog.at_level("WARNING", logger="compplan"):
        unnamed = Planner(
            loaded.module, loaded.example_inputs, budget=budget, latency=predictor, storage="memory"
        )
    assert "records hold no plan of model@1x1x8x8" in caplog.text
    assert "zoo:digits@1x1x8x8" in caplog.text and "model_spec=SPEC" in caplog.text
    assert predictor.reference_ms(unnamed.problem.graph)[1] == "predicted"
    caplog.clear()
    with caplog.at_level("WARNING", logger="compplan"):
        named = Planner(
            loaded.module,
            loaded.example_inputs,
            budget=budget,
            latency=predictor,
            model_spec="zoo:digits",
            storage="memory",
        )
    assert "records hold no plan" not in caplog.text
    assert predictor.reference_ms(named.problem.graph)[1] == "measured"


def test_onnxruntime_is_the_default_and_a_predictor_of_it_is_refused_for_torch(tmp_path, capsys):
    records, predictor = tmp_path / "ort.parquet", tmp_path / "ort.json"
    argv = ["profile", "--model", "zoo:digits", "--samples", "3", "--processes", "0"]
    argv += ["--no-structured", "--no-layers", "--min-time-ms", "0", "--rounds", "1"]
    assert main([*argv, "--out", str(records), "--json"]) == 0
    assert _json(capsys)["device"]["runtime"] == "onnxruntime"
    fit = ["fit-latency", str(records), "--kind", "flops", "--out", str(predictor)]
    assert main([*fit, *TORCH]) == 2  # records of onnxruntime, fit for torch
    assert "timed on onnxruntime, not torch" in capsys.readouterr().err
    assert main(fit) == 0
    capsys.readouterr()
    argv = ["predict-latency", "--predictor", str(predictor), "--model", "zoo:digits"]
    assert main([*argv, "--preset", "bits:8+act:8", "--json"]) == 0
    assert _json(capsys)["runtime"] == "onnxruntime"
    assert main([*argv, "--preset", "bits:8+act:8", *TORCH]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fit on records timed on onnxruntime, not torch" in err
    search = ["search", "--model", "zoo:digits", "--size-budget", "x8", "--out", "p.json"]
    search += ["--latency-model", str(predictor), "--storage", f"sqlite:///{tmp_path}/s.db"]
    assert main([*search, "--latency-budget", "x0.5", *TORCH]) == 2
    assert "--runtime onnxruntime" in capsys.readouterr().err
    assert main([*search, "--verify", "2"]) == 2  # nothing to verify against
    assert "--verify measures the best plans against a latency budget" in capsys.readouterr().err
    assert main([*search, "--runtime", "tflite"]) == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
