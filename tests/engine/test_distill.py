"""Distillation losses, choosing one from an output, the main output tensor, default_lr."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from support.models import SmallCNN
from torch import nn
from torch.nn import functional as F

from engine.finetune import (
    DISTILL_LOSSES,
    FinetuneConfig,
    default_lr,
    distill_loss,
    finetune,
    infer_distill,
    output_of,
)


def _pair(seed: int = 0, shape: tuple[int, ...] = (8, 5, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(shape, generator=generator)
    student = teacher + 0.5 * torch.randn(shape, generator=generator)
    return student, teacher


# --- the losses -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DISTILL_LOSSES)
@pytest.mark.parametrize("shape", [(8, 6), (8, 5, 6)])
def test_each_loss_is_zero_on_equal_outputs_and_positive_otherwise(kind, shape):
    student, teacher = _pair(0, shape)
    assert distill_loss(teacher.clone(), teacher, kind).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_loss(student, teacher, kind).item() > 1e-3


def test_each_loss_is_what_its_name_says():
    student, teacher = _pair(1)
    mse = ((student - teacher) ** 2).mean()
    assert distill_loss(student, teacher, "mse").item() == pytest.approx(mse.item(), rel=1e-6)

    unit_s = student / student.norm(dim=-1, keepdim=True)
    unit_t = teacher / teacher.norm(dim=-1, keepdim=True)
    cosine = (1 - (unit_s * unit_t).sum(-1)).mean()
    assert distill_loss(student, teacher, "cosine").item() == pytest.approx(cosine.item(), rel=1e-5)

    # KL(p_teacher || p_student) per position over the last dimension, at T = 2, times T².
    p_t = F.softmax(teacher / 2, dim=-1)
    kl = (p_t * (p_t.log() - F.log_softmax(student / 2, dim=-1))).sum(-1).mean()
    got = distill_loss(student, teacher, "kl", temperature=2.0).item()
    assert got == pytest.approx(4 * kl.item(), rel=1e-5)


@pytest.mark.parametrize("kind", DISTILL_LOSSES)
def test_a_gradient_step_on_each_loss_moves_the_output_towards_the_teacher(kind):
    student, teacher = _pair(2)
    student.requires_grad_(True)
    loss = distill_loss(student, teacher, kind)
    loss.backward()
    with torch.no_grad():
        stepped = student - 0.5 * student.grad / student.grad.norm() * student.norm() / 10
        assert distill_loss(stepped, teacher, kind) < loss


class _Tagger(nn.Module):
    """(B, T, 6) → (B, T, 4), a tuple output with an extra entry."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(x), x.mean()


@pytest.mark.parametrize("kind", DISTILL_LOSSES)
def test_finetuning_with_each_loss_moves_the_student_towards_the_teacher(kind):
    torch.manual_seed(0)
    teacher, student = _Tagger().eval(), _Tagger()
    data = [torch.randn(8, 5, 6) for _ in range(4)]
    x = torch.randn(32, 5, 6)

    def gap() -> float:
        with torch.no_grad():
            return distill_loss(output_of(student(x)), output_of(teacher(x)), kind).item()

    before = gap()
    config = FinetuneConfig(epochs=30, lr=1e-2, distill=kind, progress=False)
    finetune(student, teacher, data, config=config)
    assert gap() < 0.3 * before, (before, gap())


def test_cosine_ignores_the_scale_of_the_teacher_output():
    student, teacher = _pair(3)
    base = distill_loss(student, teacher, "cosine")
    assert distill_loss(student, 7.0 * teacher, "cosine").item() == pytest.approx(base.item())
    assert distill_loss(student, 7.0 * teacher, "mse") > 10 * distill_loss(student, teacher, "mse")

    class Scaled(nn.Module):
        def __init__(self, inner: nn.Module, factor: float) -> None:
            super().__init__()
            self.inner, self.factor = inner, factor

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[0] * self.factor

    torch.manual_seed(0)
    teacher_model, start = _Tagger().eval(), _Tagger()
    data = [torch.randn(8, 5, 6) for _ in range(3)]

    def trained(factor: float, kind: str) -> dict[str, torch.Tensor]:
        student = copy.deepcopy(start)
        config = FinetuneConfig(epochs=3, lr=1e-2, distill=kind, progress=False)
        finetune(student, Scaled(teacher_model, factor), data, config=config)
        return student.state_dict()

    plain, scaled = trained(1.0, "cosine"), trained(10.0, "cosine")
    assert not torch.allclose(plain["proj.weight"], start.proj.weight), "it trained"
    for key in plain:
        torch.testing.assert_close(plain[key], scaled[key], atol=1e-5, rtol=1e-4)
    # MSE does see the scale: the control that the comparison above can fail.
    assert not torch.allclose(
        trained(1.0, "mse")["proj.weight"], trained(10.0, "mse")["proj.weight"]
    )


def test_losses_refuse_mismatched_shapes_unknown_names_and_kl_without_classes():
    student, teacher = _pair(4, (8, 6))
    with pytest.raises(ValueError, match=r"\(8, 5\).*\(8, 6\)"):
        distill_loss(student[:, :5], teacher, "mse")
    with pytest.raises(ValueError, match="'kl', 'mse', 'cosine'"):
        distill_loss(student, teacher, "l2")
    with pytest.raises(ValueError, match="mse"):
        distill_loss(student[:, :1], teacher[:, :1], "kl")
    with pytest.raises(ValueError, match="mse"):
        distill_loss(student[:, 0], teacher[:, 0], "kl")


def test_config_refuses_an_unknown_distill_listing_the_choices():
    with pytest.raises(ValueError, match=r"distill='l2'.*'kl', 'mse', 'cosine'"):
        FinetuneConfig(distill="l2")
    assert FinetuneConfig().distill == "kl"
    assert {FinetuneConfig(distill=kind).distill for kind in DISTILL_LOSSES} == {*DISTILL_LOSSES}


# --- output_of and infer_distill --------------------------------------------------------------


def test_output_of_finds_the_main_tensor():
    a, b, c = torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert output_of(a) is a
    assert output_of({"hidden_states": a, "logits": b, "last_hidden_state": c}) is b
    assert output_of({"pooler_output": a, "last_hidden_state": c}) is c
    assert output_of({"loss": None, "scores": a, "other": b}) is a
    assert output_of((a, b)) is a and output_of([None, 1, b]) is b
    with pytest.raises(ValueError, match="output tensor"):
        output_of({"loss": None})
    with pytest.raises(ValueError, match="output tensor"):
        output_of("logits")


@pytest.mark.parametrize(
    ("output", "loss", "why"),
    [
        ({"logits": torch.randn(4, 10)}, "kl", "logits"),
        ({"logits": torch.randn(4, 7, 10), "hidden": torch.randn(4, 7, 8)}, "kl", "logits"),
        ({"last_hidden_state": torch.randn(4, 7, 384)}, "cosine", "last_hidden_state"),
        ({"pooler_output": torch.randn(4, 384)}, "cosine", "pooler_output"),
        ({"sentence_embedding": torch.randn(4, 384)}, "cosine", "sentence_embedding"),
        ({"encoder_hidden": torch.randn(4, 384)}, "cosine", "encoder_hidden"),
        ({"scores": torch.randn(4, 10)}, "kl", "class logits (batch, classes)"),
        (torch.randn(4, 10), "kl", "class logits (batch, classes)"),
        (torch.randn(4, 10).softmax(-1), "kl", "class logits"),
        (F.normalize(torch.randn(4, 16), dim=-1), "cosine", "normalized embeddings"),
        (torch.randn(4, 1), "mse", "regression"),
        (torch.randn(4), "mse", "regression"),
        (torch.randn(4, 7, 384), "cosine", "hidden states (batch, tokens, features)"),
        ((torch.randn(4, 7, 16), torch.randn(())), "cosine", "hidden states"),
        (torch.randn(2, 3, 4, 5), "cosine", "last dimension"),
    ],
)
def test_infer_distill_by_output_kind(output, loss, why):
    got, reason = infer_distill(output)
    assert got == loss and got in DISTILL_LOSSES
    assert why in reason


def test_infer_distill_refuses_integer_outputs():
    with pytest.raises(ValueError, match="integer"):
        infer_distill(torch.randint(0, 10, (4,)))
    with pytest.raises(ValueError, match="integer"):
        infer_distill({"logits": torch.zeros(4, 3, dtype=torch.long)})


def test_kl_on_hidden_states_is_warned_about_and_the_fitting_loss_is_not(caplog):
    torch.manual_seed(0)
    teacher, student = nn.Linear(6, 16).eval(), nn.Linear(6, 16)
    data = [torch.randn(4, 3, 6)]
    with caplog.at_level(logging.WARNING, logger="compplan"):
        finetune(student, teacher, data, config=FinetuneConfig(epochs=1, progress=False))
    warned = [r.getMessage() for r in caplog.records if "distill" in r.getMessage()]
    assert len(warned) == 1 and "hidden states" in warned[0] and "'cosine'" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compplan"):
        config = FinetuneConfig(epochs=1, distill="cosine", progress=False)
        finetune(student, teacher, data, config=config)
    assert not [r for r in caplog.records if "distill" in r.getMessage()]


# --- default_lr ----------------------------------------------------------------------------


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_default_lr_is_lower_for_transformer_like_models():
    assert default_lr(SmallCNN()) == 1e-3
    assert default_lr(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) == 1e-3
    assert default_lr(_Encoder()) == 1e-4
    assert default_lr(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))) == 1e-4
    assert default_lr(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))) == 1e-4
    assert default_lr(nn.MultiheadAttention(8, 2)) == 1e-4
