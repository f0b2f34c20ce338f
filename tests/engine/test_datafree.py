"""Data-free calibration: the BatchNorm-statistics loss, synthesis, and distilling on its output."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from support.models import SmallCNN
from torch import nn

from engine.datafree import bn_statistics_loss, synthesize_batches
from engine.finetune import FinetuneConfig, finetune
from zoo.digits import DigitsSplits, evaluate, load_digits_splits, train_digits

DIGITS_SHAPE = (1, 1, 8, 8)
NO_BATCHNORM = re.escape(
    "data-free mode needs a model with BatchNorm layers; pass real data instead"
)


@pytest.fixture(scope="module")
def splits() -> DigitsSplits:
    return load_digits_splits(0)


@pytest.fixture(scope="module")
def teacher(splits: DigitsSplits) -> nn.Module:
    """A small CNN trained on digits for a second (about 96% test accuracy)."""
    torch.manual_seed(0)
    model = train_digits(SmallCNN(), splits=splits, epochs=10, progress=False)
    for param in model.parameters():
        param.grad = None  # so that tests can tell whether synthesis wrote any
    return model


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loss_is_the_gaussian_kl_to_the_running_statistics():
    bn = nn.BatchNorm1d(2, eps=0.0).eval()
    bn.running_mean.copy_(torch.tensor([0.0, 1.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0]))
    # Batch statistics (biased): channel 0 mean 0, var 1; channel 1 mean 3, var 1.
    x = torch.tensor([[-1.0, 2.0], [1.0, 4.0]])
    kl_1 = 0.5 * (math.log(4.0) + (1.0 + (3.0 - 1.0) ** 2) / 4.0 - 1.0)
    loss = bn_statistics_loss(nn.Sequential(bn), x)
    assert loss.item() == pytest.approx((0.0 + kl_1) / 2, rel=1e-6)


def test_loss_sums_over_layers_and_is_near_zero_on_matching_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).eval()
    model[0].running_mean.fill_(2.0)
    model[0].running_var.fill_(9.0)
    x = 2.0 + 3.0 * torch.randn(4096, 3, 2, 2)
    y = model[1](model[0](x)).detach()
    model[2].running_mean.copy_(y.mean(dim=(0, 2, 3)))
    model[2].running_var.copy_(y.var(dim=(0, 2, 3)))
    assert bn_statistics_loss(model, x).item() < 1e-3
    # Shifted by one running std: the first layer alone contributes KL = 0.5 · 3²/9 per channel.
    shifted = x + 3.0
    first = bn_statistics_loss(model[:1], shifted)
    assert first.item() == pytest.approx(0.5, rel=0.05)
    second = bn_statistics_loss(model[2:], model[1](model[0](shifted)))
    assert bn_statistics_loss(model, shifted).item() == pytest.approx((first + second).item())


def test_loss_is_differentiable_in_the_input_and_leaves_the_model_alone(teacher):
    teacher.train()
    before = _snapshot(teacher)
    x = torch.randn(16, *DIGITS_SHAPE[1:], requires_grad=True)
    try:
        loss = bn_statistics_loss(teacher, x)
        assert teacher.training
    finally:
        teacher.eval()
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.abs().sum() > 0
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not any(m._forward_hooks for m in teacher.modules())


def test_synthesis_lowers_the_loss_more_than_fivefold(teacher):
    noise = torch.randn(64, *DIGITS_SHAPE[1:], generator=torch.Generator().manual_seed(0))
    synthetic = synthesize_batches(
        teacher, DIGITS_SHAPE, n_samples=64, batch_size=64, steps=100, progress=False
    )
    before = bn_statistics_loss(teacher, noise).item()
    after = bn_statistics_loss(teacher, synthetic).item()
    assert after < before / 5, (before, after)
    assert not synthetic.requires_grad


def test_output_shape_and_batches_of_nearly_equal_size(teacher):
    out = synthesize_batches(teacher, (7, 1, 8, 8), n_samples=10, batch_size=4, steps=1,
                             progress=False)  # fmt: skip
    assert out.shape == (10, 1, 8, 8) and out.dtype == torch.float32
    # 10 samples in batches of at most 4: 4 + 3 + 3, never 4 + 4 + 2. With no steps the output
    # is the starting noise, drawn batch by batch from one generator.
    noise = synthesize_batches(teacher, DIGITS_SHAPE, n_samples=10, batch_size=4, steps=0,
                               progress=False)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    expected = torch.cat([torch.randn(n, 1, 8, 8, generator=generator) for n in (4, 3, 3)])
    assert torch.equal(noise, expected)


def test_synthesis_never_modifies_the_teacher(teacher):
    teacher.train()
    teacher.bn2.eval()  # a mixed-mode teacher: each module's own flag comes back
    before = _snapshot(teacher)
    flags = [p.requires_grad for p in teacher.parameters()]
    try:
        synthesize_batches(teacher, DIGITS_SHAPE, n_samples=8, batch_size=8, steps=5,
                           progress=False)  # fmt: skip
        assert teacher.training and teacher.bn1.training and not teacher.bn2.training
    finally:
        teacher.eval()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(m._forward_hooks for m in teacher.modules())


def test_same_seed_same_samples(teacher):
    def run(seed: int) -> torch.Tensor:
        return synthesize_batches(teacher, DIGITS_SHAPE, n_samples=8, batch_size=8, steps=5,
                                  seed=seed, progress=False)  # fmt: skip

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_model_without_batchnorm_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=NO_BATCHNORM):
        synthesize_batches(model, DIGITS_SHAPE, n_samples=4, steps=1, progress=False)
    with pytest.raises(ValueError, match=NO_BATCHNORM):
        bn_statistics_loss(model, torch.randn(4, 1, 8, 8))
    untracked = nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False))
    with pytest.raises(ValueError, match=NO_BATCHNORM):
        bn_statistics_loss(untracked, torch.randn(4, 1, 8, 8))


@pytest.mark.parametrize(
    "kwargs", [{"n_samples": 0}, {"batch_size": 0}, {"steps": -1}, {"lr": 0.0}]
)
def test_out_of_range_arguments_are_refused(teacher, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        synthesize_batches(teacher, DIGITS_SHAPE, progress=False, **kwargs)


def test_progress_bar_on_stderr(teacher, capsys):
    synthesize_batches(teacher, DIGITS_SHAPE, n_samples=4, batch_size=4, steps=2, progress=True)
    captured = capsys.readouterr()
    assert "loss=" in captured.err and captured.out == ""


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    damaged = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in damaged.parameters():
            if param.dim() > 1:
                param.add_(0.4 * param.std() * torch.randn(param.shape, generator=generator))
    return damaged


def test_distilling_on_synthetic_data_repairs_a_perturbed_copy(splits, teacher):
    # The data-free pipeline end to end: damage a copy of the trained teacher, then distill it
    # back from the teacher on synthesized inputs only; no digit is seen until evaluation.
    student = _perturbed(teacher, seed=1)
    teacher_acc = evaluate(teacher, splits.test_x, splits.test_y)
    before = evaluate(student, splits.test_x, splits.test_y)

    synthetic = synthesize_batches(teacher, DIGITS_SHAPE, n_samples=128, steps=100,
                                   progress=False)  # fmt: skip
    config = FinetuneConfig(epochs=20, lr=1e-3, progress=False)
    finetune(student, teacher, list(synthetic.split(64)), config=config)
    after = evaluate(student, splits.test_x, splits.test_y)

    assert teacher_acc > 0.9
    assert before < teacher_acc - 0.1, "the perturbation should do real damage"
    assert teacher_acc - after < 0.5 * (teacher_acc - before), (teacher_acc, before, after)

    # The control: the same distillation on the starting noise (no synthesis steps) does not
    # repair the copy; its train-mode BatchNorm statistics even drift towards the noise.
    control = _perturbed(teacher, seed=1)
    noise = synthesize_batches(teacher, DIGITS_SHAPE, n_samples=128, steps=0, progress=False)
    finetune(control, teacher, list(noise.split(64)), config=config)
    assert evaluate(control, splits.test_x, splits.test_y) < after - 0.2
