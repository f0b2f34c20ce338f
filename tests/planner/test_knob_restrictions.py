"""What the search may choose (`SearchKnobs`, `compplan search --methods/--weight-bits/--act-bits/
--keep/--vq-k/--vq-m`): each restriction reaches the stored config and the space, bad values are
one line naming the allowed ones, and a layer left no option is refused by name."""

from __future__ import annotations

import json

import optuna
import pytest

from planner import Plan, PlannerError, SearchConfig
from planner.backends.optuna_backend import CONFIG_ATTR, read_study_config
from planner.cli import main
from planner.identity import StudyIdentity, _digest, _json
from planner.knob_restrictions import SearchKnobs
from search_spaces import BitsConfig, discover
from search_spaces.model_spec import load_model
from search_spaces.plan import PlanError
from search_spaces.space import SearchSpace


@pytest.fixture(scope="module")
def digits():
    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    return loaded, graph


def _search(tmp_path, *extra: str) -> list[str]:
    return [
        "search",
        "--model",
        "zoo:digits",
        "--size-budget",
        "x10",
        "--trials",
        "3",
        "--storage",
        f"sqlite:///{tmp_path / 'studies.db'}",
        "--study",
        "knobs",
        "--out",
        str(tmp_path / "plan.json"),
        *extra,
    ]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compplan: error:"), err
    return err[0]


# -- SearchKnobs ----------------------------------------------------------------------------------


def test_search_knobs_round_trip_and_convert_to_knobs():
    knobs = SearchKnobs(methods=["bits", "vq"], weight_bits=(2, 4), keep=1.0, vq_k=(256,))
    assert knobs.keep == (1.0,) and knobs.methods == ("bits", "vq")
    document = json.loads(json.dumps(knobs.to_dict()))
    assert document["version"] == 1 and SearchKnobs.from_dict(document) == knobs
    space_knobs = knobs.to_knobs()
    assert space_knobs.methods == ("bits", "vq") and space_knobs.keep == (1.0,)
    assert space_knobs.of("bits").weight_bits == (2, 4) and space_knobs.of("vq").k == (256,)
    assert SearchKnobs().knobs_kwargs() == {}


def test_the_unversioned_form_of_older_studies_still_reads():
    old = {"k": [256], "m": [9, 18], "weight_bits": [2, 4, 8], "act_bits": [32], "keep": [1.0]}
    knobs = SearchKnobs.from_dict(old)
    assert knobs == SearchKnobs(
        vq_k=(256,), vq_m=(9, 18), weight_bits=(2, 4, 8), act_bits=(32,), keep=(1.0,)
    )
    # ... so its study identity is the same as before `SearchKnobs`
    assert knobs.knobs_kwargs() == {key: tuple(value) for key, value in old.items()}
    config = SearchConfig(knobs=old)
    assert config.knobs == knobs
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert SearchConfig(knobs=knobs) == config


def test_the_identity_digests_the_knobs_as_before(digits):
    loaded, graph = digits
    for knobs in ({}, {"keep": (0.5, 1.0)}):
        config = SearchConfig(model_spec="zoo:digits", knobs=knobs)
        identity = StudyIdentity.of(loaded.module, loaded.example_inputs, graph, config)
        assert identity.components["knobs"] == _digest(_json([knobs, {}, True]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 2, "keep": [1.0]}, "search knobs version 2 is not supported"),
        ({"version": 1, "bits": [4]}, "search knobs: unknown fields bits"),
        ({"k": [256], "vq_k": [512]}, "k and vq_k both set knob vq_k"),
        ({"nope": [1]}, "unexpected keyword 'nope'"),
        (
            {"weight_bits": [5]},
            "knob weight_bits (--weight-bits): [5] are not in [1, 2, 3, 4, 8, 16]",
        ),
        ({"keep": ["all"]}, "knob keep (--keep): ['all'] are not numbers"),
        ({"methods": ["nope"]}, "are not registered weight methods ['bits', 'vq'] or 'none'"),
        ({"act_method": "nope"}, "knob act_method: 'nope' is not a registered activation method"),
        ([4], "search knobs must be a mapping"),
    ],
)
def test_bad_knobs_are_refused_in_one_line(data, message):
    with pytest.raises(PlannerError) as error:
        SearchKnobs.from_dict(data)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(PlannerError, match="search config"):
        SearchConfig.from_dict({**SearchConfig().to_dict(), "knobs": data})


# -- the CLI --------------------------------------------------------------------------------------


def test_each_flag_reaches_the_stored_config_and_the_space(tmp_path, capsys, digits):
    _, graph = digits
    flags = ["--methods", "bits,vq", "--weight-bits", "4", "--vq-k", "256", "--vq-m", "8"]
    flags += ["--act-bits", "32", "--keep", "0.5,1"]
    assert main([*_search(tmp_path, *flags), "--json"]) == 0
    restricted = SearchKnobs(
        methods=("bits", "vq"),
        weight_bits=(4,),
        vq_k=(256,),
        vq_m=(8,),
        act_bits=(32,),
        keep=(0.5, 1.0),
    )
    knobs = json.loads(capsys.readouterr().out)["knobs"]  # --json shows them, resolved
    assert knobs == json.loads(json.dumps(restricted.resolved()))
    assert knobs["methods"] == ["bits", "vq"] and knobs["vq_d_tilde_fractions"] == [
        0.25,
        0.5,
        0.75,
        1,
    ]
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    stored = optuna.load_study(study_name="knobs", storage=storage).user_attrs[CONFIG_ATTR]
    assert stored["knobs"] == json.loads(json.dumps(restricted.to_dict()))
    assert stored["knobs"]["version"] == 1 and stored["knobs"]["vq_k"] == [256]
    # what `compplan worker` rebuilds its planner from
    config = read_study_config(storage, "knobs")
    assert config.knobs == restricted
    space = SearchSpace(graph, config.knobs.to_knobs())
    inner = [n for n in graph.layers if n not in (graph.first_conv, graph.classifier)]
    for name in inner:
        choices = space.layers[name]
        assert choices.methods == ("bits", "vq") and choices.of("bits").weight_bits == (4,)
        assert choices.of("vq").k == (256,) and choices.of("vq").m == (8,)
        assert choices.act_bits == (32,)
    assert set(space.group_keep.values()) == {(1.0, 0.5)}
    plan = Plan.load(tmp_path / "plan.json")
    for name in inner:
        layer = plan.get(name)
        assert layer.weights is not None and layer.activations is None
        w = layer.weights
        assert w == BitsConfig(bits=4) or (layer.method == "vq" and (w.k, w.m) == (256, 8))
        assert layer.keep in (0.5, 1.0)


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("--weight-bits", "5", "[5] are not in [1, 2, 3, 4, 8, 16]"),
        ("--act-bits", "0", "[0] are not in [2, 3, 4, 8, 32]"),
        ("--keep", "0", "are not ratios in (0, 1]"),
        ("--keep", "1.5", "[1.5] are not ratios in (0, 1]"),
        (
            "--methods",
            "nope",
            "['nope'] are not registered weight methods ['bits', 'vq'] or 'none'",
        ),
        (
            "--weight-bits",
            "",
            "empty value: give comma-separated bit-widths from 1, 2, 3, 4, 8, 16",
        ),
        ("--keep", ",", "empty value: give comma-separated ratios in (0, 1]"),
        ("--weight-bits", "2.5", "not a comma-separated list of bit-widths from 1, 2, 3, 4, 8, 16"),
        ("--vq-k", "100", "[100] are not powers of two in 2..4096"),
        ("--vq-m", "0", "[0] are not positive integers"),
    ],
)
def test_a_bad_flag_value_is_one_line_naming_the_allowed_values(
    tmp_path, capsys, flag, value, allowed
):
    assert main(_search(tmp_path, flag, value)) == 2
    line = _one_line_error(capsys)
    assert f"argument {flag}: " in line and allowed in line
    assert not (tmp_path / "studies.db").exists()


def test_a_layer_left_no_option_is_refused_by_name(tmp_path, capsys):
    # m = 3 divides the 3×3 convs' rows but no pruned row of the 1×1 downsample (16..64)
    assert main(_search(tmp_path, "--methods", "vq", "--vq-m", "3")) == 2
    line = _one_line_error(capsys)
    assert "layer 'blocks.1.downsample.0': the knobs leave it no weight method" in line
    assert "no m in [3] divides" in line and "--vq-m" in line and "--methods" in line
    assert not (tmp_path / "plan.json").exists()


def test_an_override_may_still_leave_a_layer_dense(digits):
    _, graph = digits
    overrides = {"re:blocks\\.1\\..*": {"methods": ("vq",), "m": (3,)}}
    space = SearchSpace(graph, overrides=overrides)
    downsample = space.layers["blocks.1.downsample.0"]
    assert downsample.methods == ("none",) and "no m in [3]" in downsample.note
    with pytest.raises(PlanError, match=r"layer 'blocks\.1\.downsample\.0'"):
        SearchSpace(graph, SearchKnobs(methods=("vq",), vq_m=(3,)).to_knobs())


def test_a_keep_ratio_off_the_defaults_reaches_the_protected_ends_group(digits):
    # The first conv shares its channels with blocks.0.conv2: its protected knobs once kept only
    # the default ratios, so --keep 0.6 left that group no ratio at all.
    _, graph = digits
    space = SearchSpace(graph, SearchKnobs(keep=(0.6, 1.0)).to_knobs())
    group = graph.layers[graph.first_conv].group
    assert space.group_keep[group] == (1.0, 0.6)
    plan = space.decode({f"group{group}/keep": 0.6})
    assert plan.get("blocks.0.conv2").keep == 0.6


def test_coupled_layers_without_a_common_keep_are_refused(digits):
    _, graph = digits
    with pytest.raises(PlanError, match=r"share their channels .* no keep ratio in common"):
        SearchSpace(graph, overrides={"blocks.0.conv2": {"keep": (0.6,)}}, protect_ends=False)


def test_budget_refusals_point_at_the_flags(tmp_path, capsys):
    assert main(_search(tmp_path, "--size-budget", "x200", "--methods", "bits", "--keep", "1")) == 2
    line = _one_line_error(capsys)
    assert "--keep" in line and "--weight-bits" in line and "SearchConfig(knobs" not in line


def test_the_help_teaches_the_flags_with_their_defaults(capsys):
    assert main(["search", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "what the search may choose:" in out
    assert "--weight-bits LIST the bits method's bit-widths, from 1,2,3,4,8,16" in out
    assert "32 alone compresses weights only (default 2,3,4,8,32)" in out
    assert (
        "--methods LIST" in out
        and "(default vq,bits)" in out
        and "(default 0.25,0.5,0.75,1)" in out
    )


def test_a_ray_marker_of_an_older_compplan_compares_its_knobs_by_meaning():
    from planner.backends.ray_backend import _knobs_document

    written_now = json.loads(json.dumps(SearchKnobs(keep=(1.0,)).to_dict()))
    assert _knobs_document({"keep": [1.0]}) == written_now
    assert _knobs_document("not knobs") == "not knobs"
