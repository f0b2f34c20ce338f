"""The on-disk cache of discovered graphs: a hit is the same graph, and any change to what
discovery reads (the structure, a class's code, the inputs) is a miss."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from search_spaces import discover
from search_spaces.graph_cache import cache_key

SOURCE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.conv(x).{pool}((2, 3)))
"""


def _net(tmp_path, name, pool="mean"):
    path = tmp_path / f"{name}.py"
    path.write_text(SOURCE.format(pool=pool))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.Net().eval()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPPLAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("COMPPLAN_NO_GRAPH_CACHE", raising=False)
    return tmp_path / "cache" / "graphs"


def test_a_second_discovery_reads_the_same_graph_from_the_cache(tmp_path, cache_dir):
    model, x = _net(tmp_path, "cached_net_a"), torch.randn(1, 3, 8, 8)
    first = discover(model, x, model_name="first")
    assert len(list(cache_dir.glob("*.json"))) == 1
    again = discover(model, x, model_name="again")
    assert again == type(first)(**{**first.__dict__, "model_name": "again"})
    assert again.fingerprint == first.fingerprint and again.groups == first.groups


def test_changed_code_structure_or_inputs_miss_the_cache(tmp_path, cache_dir):
    model, x = _net(tmp_path, "cached_net_b"), torch.randn(1, 3, 8, 8)
    key = cache_key(model, (x,))
    assert cache_key(model, (torch.randn(2, 3, 8, 8),)) != key  # other inputs
    other_code = _net(tmp_path, "cached_net_c", pool="amax")  # the same structure, new forward
    assert repr(other_code) == repr(model)
    assert cache_key(other_code, (x,)) != key
    model.fc = torch.nn.Linear(16, 5)  # another structure
    assert cache_key(model, (x,)) != key


def test_a_damaged_cache_file_is_ignored_and_the_cache_can_be_turned_off(
    tmp_path, cache_dir, monkeypatch
):
    model, x = _net(tmp_path, "cached_net_d"), torch.randn(1, 3, 8, 8)
    graph = discover(model, x)
    (file,) = cache_dir.glob("*.json")
    file.write_text("{not json")
    assert discover(model, x) == graph
    file.unlink()
    monkeypatch.setenv("COMPPLAN_NO_GRAPH_CACHE", "1")
    discover(model, x)
    assert not list(cache_dir.glob("*.json"))
