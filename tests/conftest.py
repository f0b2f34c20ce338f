"""Shared fixtures: graphs of the zoo models are built once per test session (discovery of
ResNet-50 takes about a second), and the digits cache lives in a temporary folder."""

from __future__ import annotations

import pytest
import torch

from search_spaces import discover
from zoo.mobilenet import mobilenet_v2
from zoo.resnet import resnet18, resnet50

IMAGENET = (1, 3, 224, 224)


@pytest.fixture(scope="session")
def resnet18_graph():
    return discover(resnet18().eval(), torch.randn(*IMAGENET), model_name="zoo:resnet18")


@pytest.fixture(scope="session")
def resnet50_graph():
    return discover(resnet50().eval(), torch.randn(*IMAGENET), model_name="zoo:resnet50")


@pytest.fixture(scope="session")
def mobilenet_graph():
    return discover(mobilenet_v2().eval(), torch.randn(*IMAGENET), model_name="zoo:mobilenet_v2")
