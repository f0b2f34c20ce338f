"""Shared fixtures: graphs of the zoo models are built once per test session (discovery of
ResNet-50 takes about a second), and so is the PostgreSQL server the worker tests share."""

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


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server of the tests' own on loopback (`support.postgres`), for the session."""
    from support.postgres import running_postgres

    with running_postgres() as url:
        yield url
