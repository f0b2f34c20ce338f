"""ImageNet architectures match torchvision's parameter counts, keys and output shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.mobilenet import _make_divisible, mobilenet_v2
from zoo.resnet import resnet18, resnet50

EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
}

# Representative keys (with shapes) taken from torchvision's state_dicts.
EXPECTED_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.num_batches_tracked": (),
        "layer3.0.downsample.0.weight": (256, 128, 1, 1),
        "layer4.1.bn2.running_var": (512,),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    },
    "resnet50": {
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.weight": (1024,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
    },
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.running_var": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.17.conv.3.running_mean": (320,),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    },
}

# torchvision's state_dict sizes (including BatchNorm num_batches_tracked buffers).
EXPECTED_NUM_KEYS = {"resnet18": 122, "resnet50": 320, "mobilenet_v2": 314}

BUILDERS = {"resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2}

ALL_NAMES = [
    "bert_tiny",
    "convnext_tiny",
    "densenet_tiny",
    "digits",
    "efficientnet_tiny",
    "minilm",
    "mnist1d",
    "mobilenet_v2",
    "regnet_tiny",
    "resnet18",
    "resnet50",
    "shufflenet_v2_tiny",
    "vit_tiny",
]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    # Built once: ResNet-50's init alone takes a noticeable fraction of a second.
    torch.manual_seed(0)
    return {name: build() for name, build in BUILDERS.items()}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_parameter_count(models: dict[str, nn.Module], name: str) -> None:
    assert sum(p.numel() for p in models[name].parameters()) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_matches_torchvision_layout(models: dict[str, nn.Module], name: str) -> None:
    state = models[name].state_dict()
    assert len(state) == EXPECTED_NUM_KEYS[name]
    for key, shape in EXPECTED_KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_forward_shape(models: dict[str, nn.Module], name: str) -> None:
    model = models[name].eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_num_classes() -> None:
    model = resnet18(num_classes=10).eval()
    assert model.fc.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert mobilenet_v2(num_classes=7).classifier[1].out_features == 7


def test_mobilenet_structure() -> None:
    model = mobilenet_v2()
    assert isinstance(model.classifier[0], nn.Dropout)
    assert isinstance(model.features[0][2], nn.ReLU6)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_init_follows_torchvision(models: dict[str, nn.Module]) -> None:
    bn = models["resnet18"].layer1[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
    w = models["resnet50"].layer4[0].conv2.weight
    expected_std = (2.0 / (512 * 3 * 3)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.02
    fc = models["mobilenet_v2"].classifier[1]
    assert torch.equal(fc.bias, torch.zeros_like(fc.bias))
    assert abs(fc.weight.std().item() - 0.01) < 0.001


@pytest.mark.parametrize(
    ("value", "expected"), [(32, 32), (16 * 0.5, 8), (3, 8), (35, 32), (37, 40), (1280, 1280)]
)
def test_make_divisible(value: float, expected: int) -> None:
    assert _make_divisible(value, 8) == expected


def test_registry_names_and_errors() -> None:
    assert zoo.names() == ALL_NAMES
    with pytest.raises(ValueError) as excinfo:
        zoo.get("x")
    assert str(excinfo.value) == f"unknown zoo model 'x'; choose one of: {', '.join(ALL_NAMES)}"


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_registry_imagenet_entries(name: str) -> None:
    entry = zoo.get(name)
    assert entry.name == name
    assert entry.task is None
    assert entry.input_shape == (1, 3, 224, 224)
    assert entry.description
    model = entry.build()
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    assert entry.build() is not model


def test_registry_digits_entry() -> None:
    entry = zoo.get("digits")
    assert entry.task == "digits"
    assert entry.input_shape == (1, 1, 8, 8)
    assert entry.description
    assert callable(entry.build)
