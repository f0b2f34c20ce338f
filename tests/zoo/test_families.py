"""The architecture families (`zoo.families`): each builds, runs on its example input, has the
parameters its description says, and builds the same weights every time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from search_spaces.model_spec import load_model
from zoo import families

NAMES = [entry.name for entry in families.ENTRIES]
# Parameter counts: the descriptions quote them; a change to a model shows here first.
PARAMS = {
    "shufflenet_v2_tiny": 125_962,
    "efficientnet_tiny": 129_778,
    "regnet_tiny": 280_024,
    "convnext_tiny": 306_778,
    "densenet_tiny": 102_778,
    "vit_tiny": 217_290,
    "bert_tiny": 661_248,
}


def _example(name: str) -> torch.Tensor:
    return load_model(f"zoo:{name}").example_inputs[0]


def test_every_family_is_registered() -> None:
    assert sorted(NAMES) == sorted(PARAMS)
    assert set(NAMES) <= set(zoo.names())


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_runs(name: str) -> None:
    entry = zoo.get(name)
    model = entry.build()
    assert not model.training and entry.task is None
    with torch.no_grad():
        out = model(_example(name))
    assert out.shape == ((1, 128) if name == "bert_tiny" else (1, 10))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_small_and_described(name: str) -> None:
    entry = zoo.get(name)
    count = sum(p.numel() for p in entry.build().parameters())
    assert count == PARAMS[name] and 50_000 < count < 1_000_000
    assert f"{count / 1000:.0f}k params" in entry.description


@pytest.mark.parametrize("name", NAMES)
def test_builds_are_deterministic_and_independent(name: str) -> None:
    entry = zoo.get(name)
    state = torch.random.get_rng_state()
    first, second = entry.build(), entry.build()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is kept
    assert first is not second
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    next(first.parameters()).data.add_(1.0)
    assert torch.equal(next(second.parameters()), next(entry.build().parameters()))


def test_image_models_take_64x64_images() -> None:
    for name in NAMES:
        if name != "bert_tiny":
            assert zoo.get(name).input_shape == (1, 3, 64, 64)
            assert _example(name).dtype == torch.float32


def test_bert_takes_token_ids_inside_its_vocabulary() -> None:
    ids = _example("bert_tiny")
    assert ids.shape == (1, 32) and ids.dtype == torch.int64
    assert ids.min() > 0 and ids.max() < families.BERT_VOCAB
    # --input-shape reaches the entry's maker: another batch and length, still ids
    other = load_model("zoo:bert_tiny", input_shape="4,16").example_inputs[0]
    assert other.shape == (4, 16) and other.dtype == torch.int64
    model = zoo.get("bert_tiny").build()
    with torch.no_grad():
        assert model(other).shape == (4, 128)


def test_family_structures() -> None:
    def modules(name: str) -> list[nn.Module]:
        return list(zoo.get(name).build().modules())

    vit = modules("vit_tiny")
    assert sum(isinstance(m, nn.MultiheadAttention) for m in vit) == 4
    assert all(m.batch_first for m in vit if isinstance(m, nn.MultiheadAttention))
    bert = zoo.get("bert_tiny").build()
    assert sum(isinstance(m, nn.Embedding) for m in bert.modules()) == 3
    names = dict(bert.named_modules())
    for part in ("query", "key", "value"):
        assert isinstance(names[f"encoder.layer.0.attention.self.{part}"], nn.Linear)
    assert isinstance(names["encoder.layer.1.attention.output.dense"], nn.Linear)
    regnet = [m for m in modules("regnet_tiny") if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert regnet and all(m.in_channels // m.groups == 8 for m in regnet)
    assert any(isinstance(m, nn.SiLU) for m in modules("efficientnet_tiny"))
    convnext = zoo.get("convnext_tiny").build()
    assert convnext.downsample[0][0].kernel_size == (4, 4) == convnext.downsample[0][0].stride
    assert isinstance(convnext.stages[0][0].gamma, nn.Parameter)


def test_channel_shuffle_interleaves() -> None:
    x = torch.arange(4.0).view(1, 4, 1, 1)
    assert families.channel_shuffle(x, 2).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]


@pytest.mark.parametrize("name", ["efficientnet_tiny", "convnext_tiny"])
def test_stochastic_depth_acts_only_in_training(name: str) -> None:
    model = zoo.get(name).build()
    rates = [m.p for m in model.modules() if isinstance(m, families.DropPath)]
    assert rates and max(rates) > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: every drop path is the identity


def test_drop_path_drops_whole_examples_and_rescales() -> None:
    drop = families.DropPath(0.5).train()
    torch.manual_seed(0)
    y = torch.randn(64, 4, 2, 2) + 10  # no zeros of its own
    out = drop(y)
    zeroed = (out.flatten(1) == 0).all(dim=1)
    assert 0 < zeroed.sum() < 64
    assert torch.allclose(out[~zeroed], 2 * y[~zeroed])
    assert torch.equal(drop.eval()(y), y)
