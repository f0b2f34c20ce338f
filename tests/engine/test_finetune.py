"""Fine-tuning: distillation, per-layer learning rates and freezing, callbacks, determinism."""

from __future__ import annotations

import pytest
import torch
from support.models import SmallCNN
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from engine.finetune import (
    FinetuneConfig,
    FinetuneResult,
    StopFinetune,
    build_param_groups,
    finetune,
)
from search_spaces.plan import LayerPlan, Plan
from zoo.digits import DigitsSplits, evaluate, load_digits_splits, train_digits

QUIET = FinetuneConfig(progress=False)


def _small_cnn(seed: int, **kwargs: float) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(**kwargs)


def _plan(**lr_mults: float) -> Plan:
    return Plan(layers={name: LayerPlan(lr_mult=mult) for name, mult in lr_mults.items()})


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def splits() -> DigitsSplits:
    return load_digits_splits(0)


@pytest.fixture(scope="module")
def teacher(splits: DigitsSplits) -> nn.Module:
    """A small CNN trained on digits for a second (about 96% test accuracy)."""
    model = train_digits(_small_cnn(0), splits=splits, epochs=10, progress=False)
    for param in model.parameters():
        param.grad = None  # so that tests can tell whether fine-tuning wrote any
    return model


def _batches(splits: DigitsSplits, *, labels: bool, batch_size: int = 64) -> list:
    xs = splits.train_x.split(batch_size)
    return list(zip(xs, splits.train_y.split(batch_size), strict=True)) if labels else list(xs)


@torch.no_grad()
def _kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    student.eval()
    return F.kl_div(
        F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1), log_target=True,
        reduction="batchmean",
    ).item()  # fmt: skip


def test_distillation_moves_student_towards_teacher(splits, teacher):
    student = _small_cnn(1)
    before = _kl(student, teacher, splits.test_x)
    config = FinetuneConfig(epochs=3, lr=1e-2, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False), config=config)
    after = _kl(student, teacher, splits.test_x)
    assert isinstance(result, FinetuneResult)
    assert after < 0.25 * before, (before, after)
    assert len(result.losses) == 3 and result.losses[-1] < result.losses[0]
    assert result.metrics == ({}, {}, {}) and not result.stopped_early


def test_kd_with_labels_adds_weighted_cross_entropy(splits, teacher):
    x, y = splits.train_x[:64], splits.train_y[:64]
    student = _small_cnn(1)
    config = FinetuneConfig(epochs=1, ce_weight=0.5, temperature=2.0, progress=False)
    with torch.no_grad():
        student.train()
        s, t = student(x), teacher.eval()(x)
        expected = 4.0 * F.kl_div(
            F.log_softmax(s / 2, 1), F.log_softmax(t / 2, 1), log_target=True,
            reduction="batchmean",
        ) + 0.5 * F.cross_entropy(s, y)  # fmt: skip
    # One batch, one epoch: the recorded loss is the loss before the only step.
    result = finetune(student, teacher, [(x, y)], config=config)
    assert result.losses[0] == pytest.approx(expected.item(), rel=1e-5)


def test_student_left_in_eval_and_teacher_untouched(splits, teacher):
    teacher.train()
    teacher.bn2.eval()  # a mixed-mode teacher: each module's own flag comes back
    before = _state(teacher)
    student = _small_cnn(1)
    running_mean = student.bn1.running_mean.clone()
    try:
        finetune(student, teacher, _batches(splits, labels=False)[:4], config=QUIET)
        assert teacher.training and teacher.bn1.training and not teacher.bn2.training
    finally:
        teacher.eval()
    assert not student.training
    assert not any(m.training for m in student.modules())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in teacher.parameters())
    assert not torch.equal(student.bn1.running_mean, running_mean), "BN statistics update"


def test_build_param_groups_assigns_each_parameter_once_at_its_layers_lr():
    student = _small_cnn(0)
    groups = build_param_groups(student, _plan(conv1=0.1, fc=1.0, conv3=0.0), 1e-3)
    by_layer = {g["layer"]: g for g in groups}
    assert [g["layer"] for g in groups] == [None, "conv1", "fc", "conv3"]
    assert by_layer["conv1"]["lr"] == pytest.approx(1e-4)
    assert by_layer["fc"]["lr"] == pytest.approx(1e-3)
    assert by_layer["conv3"]["lr"] == 0.0 and by_layer["conv3"]["lr_mult"] == 0.0
    assert by_layer[None]["lr"] == pytest.approx(1e-3) and by_layer[None]["lr_mult"] == 1.0
    assert by_layer["conv1"]["params"] == [student.conv1.weight]
    assert by_layer["fc"]["params"] == [student.fc.weight, student.fc.bias]
    placed = [id(p) for g in groups for p in g["params"]]
    assert sorted(placed) == sorted(id(p) for p in student.parameters())


def test_build_param_groups_nested_names_go_to_the_innermost_layer():
    model = nn.Sequential()
    model.add_module("block", nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    model.add_module("head", nn.Linear(2, 2))
    groups = build_param_groups(model, _plan(**{"block": 0.1, "block.0": 0.01}), 1.0)
    by_layer = {g["layer"]: g["params"] for g in groups}
    assert by_layer["block.0"] == [model.block[0].weight, model.block[0].bias]
    assert by_layer["block"] == [model.block[1].weight, model.block[1].bias]
    assert by_layer[None] == [model.head.weight, model.head.bias]
    # The root ("") is a name too, and the outermost of all.
    groups = build_param_groups(model, _plan(**{"": 0.5, "block.0": 0.01}), 1.0)
    assert {g["layer"]: len(g["params"]) for g in groups} == {"": 4, "block.0": 2}


def test_build_param_groups_tied_weights_follow_the_innermost_alias():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.Sequential(shared))
    groups = build_param_groups(model, _plan(**{"0": 0.1, "1.0": 0.01}), 1.0)
    assert [(g["layer"], len(g["params"])) for g in groups] == [("1.0", 2)]


def test_build_param_groups_skips_frozen_and_parameterless_layers():
    student = _small_cnn(0)
    student.conv2.weight.requires_grad_(False)
    groups = build_param_groups(student, _plan(conv2=0.1, drop=0.1), 1.0)
    assert [g["layer"] for g in groups] == [None]
    assert all(p is not student.conv2.weight for p in groups[0]["params"])
    assert build_param_groups(student, None, 2.0)[0]["lr"] == 2.0


def test_unknown_layer_in_plan_raises_naming_it(splits, teacher):
    student = _small_cnn(0)
    with pytest.raises(ValueError, match="'layer9'"):
        build_param_groups(student, _plan(layer9=0.1), 1e-3)
    with pytest.raises(ValueError, match=r"'conv1\.nope'"):
        finetune(student, teacher, [splits.train_x[:8]], _plan(**{"conv1.nope": 1.0}), config=QUIET)


def test_lr_mult_zero_freezes_exactly_that_layer(splits, teacher):
    student = _small_cnn(1)
    before = _state(student)
    plan = _plan(conv2=0.0, fc=0.1)
    finetune(student, teacher, _batches(splits, labels=False)[:5], plan, config=QUIET)
    after = student.state_dict()
    assert torch.equal(after["conv2.weight"], before["conv2.weight"])
    for key in ("conv1.weight", "conv3.weight", "bn2.weight", "bn2.bias", "fc.weight", "fc.bias"):
        assert not torch.equal(after[key], before[key]), key
    assert all(p.requires_grad for p in student.parameters()), "requires_grad is restored"


def test_lr_mult_scales_the_first_adam_step(splits, teacher):
    # Adam's first step moves every weight by about lr (|m / sqrt(v)| = 1), so one batch and one
    # epoch show each group's learning rate directly in the weights.
    student = _small_cnn(1)
    before = _state(student)
    config = FinetuneConfig(epochs=1, lr=1e-3, progress=False)
    finetune(student, teacher, [splits.train_x[:64]], _plan(conv1=0.1, conv3=0.01), config=config)
    after = student.state_dict()

    def step(key: str) -> float:
        return (after[key] - before[key]).abs().max().item()

    assert step("conv1.weight") == pytest.approx(1e-4, rel=0.01)
    assert step("conv3.weight") == pytest.approx(1e-5, rel=0.01)
    assert step("conv2.weight") == pytest.approx(1e-3, rel=0.01)
    assert step("fc.weight") == pytest.approx(1e-3, rel=0.01)


def test_parameters_frozen_beforehand_stay_frozen(splits, teacher):
    student = _small_cnn(1)
    student.conv1.weight.requires_grad_(False)
    student.bn3.bias.requires_grad_(False)
    before = _state(student)
    finetune(student, teacher, _batches(splits, labels=False)[:3], _plan(conv1=1.0), config=QUIET)
    assert torch.equal(student.conv1.weight, before["conv1.weight"])
    assert torch.equal(student.bn3.bias, before["bn3.bias"])
    assert not student.conv1.weight.requires_grad and not student.bn3.bias.requires_grad
    assert student.conv2.weight.requires_grad


def test_requires_grad_restored_when_training_fails(splits, teacher):
    student = _small_cnn(1)

    def boom(epoch: int, model: nn.Module) -> None:
        assert not model.conv2.weight.requires_grad, "frozen while training"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        finetune(student, teacher, [splits.train_x[:8]], _plan(conv2=0), config=QUIET,
                 on_epoch_end=boom)  # fmt: skip
    assert student.conv2.weight.requires_grad
    assert not student.training


def test_everything_frozen_still_updates_batchnorm_statistics(splits, teacher):
    student = _small_cnn(1)
    before = _state(student)
    plan = _plan(**{"": 0.0})
    result = finetune(student, teacher, _batches(splits, labels=False)[:3], plan, config=QUIET)
    assert len(result.losses) == 3
    assert torch.equal(student.conv1.weight, before["conv1.weight"])
    assert not torch.equal(student.bn1.running_mean, before["bn1.running_mean"])
    assert all(p.requires_grad for p in student.parameters())


def test_cross_entropy_only_without_teacher(splits):
    student = _small_cnn(1)
    config = FinetuneConfig(epochs=5, lr=3e-3, ce_weight=1.0, progress=False)
    loader = DataLoader(
        TensorDataset(splits.train_x, splits.train_y),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    result = finetune(student, None, loader, config=config)
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert evaluate(student, splits.val_x, splits.val_y) > 0.7


def test_no_teacher_needs_labels_and_ce_weight(splits):
    student = _small_cnn(1)
    with pytest.raises(ValueError, match="teacher"):
        finetune(student, None, _batches(splits, labels=True)[:2], config=QUIET)
    config = FinetuneConfig(ce_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="labels"):
        finetune(student, None, _batches(splits, labels=False)[:2], config=config)
    # A DataLoader over inputs alone yields one-element lists: still no labels.
    loader = DataLoader(TensorDataset(splits.train_x[:32]), batch_size=16)
    with pytest.raises(ValueError, match="labels"):
        finetune(student, None, loader, config=config)


def test_bad_data_is_refused_with_a_hint(splits, teacher):
    student = _small_cnn(1)
    with pytest.raises(ValueError, match="one-shot iterator"):
        finetune(student, teacher, (x for x in splits.train_x.split(8)), config=QUIET)
    with pytest.raises(ValueError, match="no batches"):
        finetune(student, teacher, [], config=QUIET)
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        finetune(student, teacher, [(splits.train_x[:8],) * 3], config=QUIET)
    with pytest.raises(ValueError, match="copy"):
        finetune(student, student, [splits.train_x[:8]], config=QUIET)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": -1},
        {"lr": 0.0},
        {"lr": 1e-3, "lr_min": 1e-2},
        {"temperature": 0.0},
        {"ce_weight": -1.0},
        {"weight_decay": -1.0},
    ],
)
def test_config_rejects_out_of_range_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FinetuneConfig(**kwargs)


def test_zero_epochs_trains_nothing(splits, teacher):
    student = _small_cnn(1)
    before = _state(student)
    result = finetune(student, teacher, [splits.train_x[:8]], config=FinetuneConfig(epochs=0))
    assert result == FinetuneResult(losses=(), metrics=(), stopped_early=False)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_on_epoch_end_sees_eval_mode_and_its_metrics_are_recorded(splits, teacher):
    student = _small_cnn(1)
    modes_in_forward: list[bool] = []
    student.register_forward_pre_hook(lambda module, args: modes_in_forward.append(module.training))

    def on_epoch_end(epoch: int, model: nn.Module) -> dict | None:
        assert model is student and not model.training
        if epoch == 1:
            return None
        return {"epoch": epoch, "accuracy": evaluate(model, splits.val_x, splits.val_y)}

    config = FinetuneConfig(epochs=3, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                      on_epoch_end=on_epoch_end)  # fmt: skip
    assert [m.get("epoch") for m in result.metrics] == [0, None, 2]
    assert result.metrics[1] == {}
    assert 0.0 <= result.metrics[2]["accuracy"] <= 1.0
    # Two training batches per epoch in train mode, then the callback's evaluation in eval mode.
    assert modes_in_forward == [True, True, False, True, True, True, True, False]


def test_stop_finetune_ends_training_early(splits, teacher):
    student = _small_cnn(1)

    def on_epoch_end(epoch: int, model: nn.Module) -> dict:
        if epoch == 1:
            raise StopFinetune("pruned", metrics={"accuracy": 0.5})
        return {"accuracy": 0.9}

    config = FinetuneConfig(epochs=5, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                      on_epoch_end=on_epoch_end)  # fmt: skip
    assert result.stopped_early
    assert len(result.losses) == 2
    assert result.metrics == ({"accuracy": 0.9}, {"accuracy": 0.5})
    assert not student.training


def test_same_seed_gives_identical_weights(splits, teacher):
    def run(seed: int) -> dict[str, torch.Tensor]:
        student = _small_cnn(1, dropout=0.3)
        loader = DataLoader(
            TensorDataset(splits.train_x[:256], splits.train_y[:256]),
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        config = FinetuneConfig(epochs=2, ce_weight=0.5, seed=seed, progress=False)
        finetune(student, teacher, loader, _plan(conv1=0.1), config=config)
        return student.state_dict()

    first, second, other = run(0), run(0), run(1)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # The seed drives dropout here, so another seed gives other weights.
    assert not torch.equal(first["fc.weight"], other["fc.weight"])


def test_unsized_data_is_counted_for_the_schedule(splits, teacher):
    class Batches:
        def __init__(self, xs: list[torch.Tensor]) -> None:
            self.xs = xs

        def __iter__(self):
            return iter(self.xs)

    student = _small_cnn(1)
    result = finetune(student, teacher, Batches(_batches(splits, labels=False)[:3]), config=QUIET)
    assert len(result.losses) == 3


def test_progress_bar_shows_the_running_loss_on_stderr(splits, teacher, capsys):
    config = FinetuneConfig(epochs=1, progress=True)
    finetune(_small_cnn(1), teacher, [splits.train_x[:8]], config=config)
    captured = capsys.readouterr()
    assert "loss=" in captured.err and captured.out == ""


def test_sequence_and_tuple_outputs_distil_per_position():
    import torch
    from torch import nn

    from engine.finetune import FinetuneConfig, finetune, output_of

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 4)

        def forward(self, x):  # (B, T, 6) → ((B, T, 4), extra)
            return self.proj(x), x.mean()

    torch.manual_seed(0)
    teacher, student = Tagger().eval(), Tagger()
    data = [torch.randn(8, 5, 6) for _ in range(4)]
    x = torch.randn(16, 5, 6)

    def gap() -> float:
        with torch.no_grad():
            return (output_of(student(x)) - output_of(teacher(x))).abs().mean().item()

    before = gap()
    finetune(student, teacher, data, config=FinetuneConfig(epochs=30, lr=1e-2, progress=False))
    assert gap() < 0.5 * before
    assert output_of({"logits": x}) is x and output_of((x, 1)) is x


# --- keeping the best scored state -----------------------------------------------------------


class _Scripted:
    """A score that says the given values in turn, checking that the student is in eval mode."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self, model: nn.Module) -> float:
        assert not model.training and not any(m.training for m in model.modules())
        self.calls += 1
        return self.values.pop(0)


def _capture(states: list[dict[str, torch.Tensor]], stop_at: int | None = None, error=None):
    """An on_epoch_end recording the state after each epoch; raising at epoch ``stop_at``."""

    def on_epoch_end(epoch: int, model: nn.Module) -> None:
        states.append(_state(model))
        if epoch == stop_at:
            raise (error or StopFinetune("pruned"))

    return on_epoch_end


def _assert_state(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_without_score_nothing_is_scored_or_restored(splits, teacher):
    student = _small_cnn(1)
    states: list[dict[str, torch.Tensor]] = []
    config = FinetuneConfig(epochs=2, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                      on_epoch_end=_capture(states))  # fmt: skip
    assert result.scores == () and result.best_epoch is None
    _assert_state(student, states[-1])


def test_keep_best_returns_the_initial_state_when_training_only_makes_it_worse(splits, teacher):
    student = _small_cnn(1)
    student.conv1.weight.requires_grad_(False)  # frozen beforehand
    initial = _state(student)

    def closeness(model: nn.Module) -> float:
        # Minus the distance to the weights it started with: every step of training is worse.
        assert not model.training
        return -sum(
            (value.float() - initial[key].float()).pow(2).sum().item()
            for key, value in model.state_dict().items()
        )

    config = FinetuneConfig(epochs=3, lr=1e-2, progress=False)
    plan = _plan(conv2=0.0)  # frozen for the duration
    result = finetune(student, teacher, _batches(splits, labels=False)[:3], plan, config=config,
                      score=closeness)  # fmt: skip
    assert result.best_epoch == 0
    assert len(result.scores) == config.epochs + 1 and result.scores[0] == 0.0
    assert all(s < 0 for s in result.scores[1:]), result.scores
    # Parameters and buffers (BatchNorm statistics, num_batches_tracked) are those it came with.
    _assert_state(student, initial)
    assert not student.conv1.weight.requires_grad
    assert student.conv2.weight.requires_grad and student.fc.weight.requires_grad
    assert not student.training


def test_keep_best_keeps_the_improved_state(splits, teacher):
    student = _small_cnn(1)
    states: list[dict[str, torch.Tensor]] = []

    def agreement(model: nn.Module) -> float:
        return -_kl(model, teacher, splits.val_x)

    config = FinetuneConfig(epochs=3, lr=1e-2, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False), config=config,
                      on_epoch_end=_capture(states), score=agreement)  # fmt: skip
    assert len(result.scores) == 4 and result.best_epoch is not None and result.best_epoch >= 1
    assert result.scores[result.best_epoch] == max(result.scores) > result.scores[0]
    _assert_state(student, states[result.best_epoch - 1])
    assert agreement(student) == pytest.approx(result.scores[result.best_epoch])


def test_keep_best_restores_the_earliest_best_epoch(splits, teacher):
    student = _small_cnn(1)
    states: list[dict[str, torch.Tensor]] = []
    score = _Scripted(0.1, 0.5, 0.9, 0.3, 0.9)  # epochs 2 and 4 tie: the earlier one wins
    config = FinetuneConfig(epochs=4, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                      on_epoch_end=_capture(states), score=score)  # fmt: skip
    assert result.scores == (0.1, 0.5, 0.9, 0.3, 0.9) and result.best_epoch == 2
    assert score.calls == 5
    _assert_state(student, states[1])
    assert not torch.equal(states[1]["fc.weight"], states[3]["fc.weight"]), "it did change"


def test_a_nan_score_is_never_the_best(splits, teacher):
    student = _small_cnn(1)
    states: list[dict[str, torch.Tensor]] = []
    config = FinetuneConfig(epochs=3, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                      on_epoch_end=_capture(states),
                      score=_Scripted(float("nan"), 0.2, float("nan"), 0.1))  # fmt: skip
    assert result.best_epoch == 1
    _assert_state(student, states[0])
    # Nothing but NaN: nothing beats the state it came in.
    initial = _state(student)
    result = finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                      score=_Scripted(*[float("nan")] * 4))  # fmt: skip
    assert result.best_epoch == 0
    _assert_state(student, initial)


def test_stop_finetune_restores_the_best_so_far(splits, teacher):
    student = _small_cnn(1)
    states: list[dict[str, torch.Tensor]] = []
    config = FinetuneConfig(epochs=5, progress=False)
    result = finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                      on_epoch_end=_capture(states, stop_at=1),
                      score=_Scripted(0.2, 0.7, 0.4, 1.0, 1.0, 1.0))  # fmt: skip
    assert result.stopped_early and len(result.losses) == 2
    assert result.scores == (0.2, 0.7, 0.4) and result.best_epoch == 1
    _assert_state(student, states[0])


def test_an_error_leaves_the_student_as_training_left_it(splits, teacher):
    student = _small_cnn(1)
    initial = _state(student)
    states: list[dict[str, torch.Tensor]] = []
    config = FinetuneConfig(epochs=3, progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        finetune(student, teacher, _batches(splits, labels=False)[:2], config=config,
                 on_epoch_end=_capture(states, stop_at=1, error=RuntimeError("boom")),
                 score=_Scripted(0.9, 0.1, 0.1))  # fmt: skip
    _assert_state(student, states[1])
    assert not torch.equal(student.fc.weight, initial["fc.weight"])


def test_score_with_zero_epochs_scores_once(splits, teacher):
    student = _small_cnn(1)
    config = FinetuneConfig(epochs=0, progress=False)
    result = finetune(student, teacher, [splits.train_x[:8]], config=config, score=_Scripted(0.3))
    assert result.scores == (0.3,) and result.best_epoch == 0 and result.losses == ()


def test_scoring_does_not_change_what_training_does(splits, teacher):
    def run(score) -> dict[str, torch.Tensor]:
        student = _small_cnn(1, dropout=0.3)
        config = FinetuneConfig(epochs=2, seed=3, progress=False)
        finetune(student, teacher, _batches(splits, labels=False)[:3], config=config, score=score)
        return student.state_dict()

    # Rising scores: the last state is the best, and it is the one training without score gives.
    plain, scored = run(None), run(_Scripted(0.1, 0.2, 0.3))
    for key in plain:
        assert torch.equal(plain[key], scored[key]), key
