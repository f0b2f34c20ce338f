"""The MNIST-1D task: data splits, Mnist1dNet structure, training, the task and the cache."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from engine.task import check_task
from search_spaces import discover
from zoo import mnist1d
from zoo.mnist1d import (
    CACHE_FILENAME,
    INPUT_SHAPE,
    Mnist1dNet,
    Mnist1dSplits,
    accuracy_on,
    load_mnist1d_splits,
    pretrained_mnist1d,
    train_mnist1d,
)
from zoo.tasks import Mnist1dTask, get_task


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def splits() -> Mnist1dSplits:
    return load_mnist1d_splits(0)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("COMPPLAN_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace training with an instant stub; returns a list that grows by one per call."""
    calls: list[int] = []

    def _fake_train(model: nn.Module | None = None, **kwargs: object) -> nn.Module:
        calls.append(1)
        torch.manual_seed(len(calls))
        return Mnist1dNet().eval()

    monkeypatch.setattr(mnist1d, "train_mnist1d", _fake_train)
    return calls


# --- data -------------------------------------------------------------------------------------


def test_split_shapes_and_types(splits: Mnist1dSplits) -> None:
    assert [len(splits.train_y), len(splits.val_y), len(splits.test_y)] == [3500, 500, 1000]
    for x, y in [
        (splits.train_x, splits.train_y),
        (splits.val_x, splits.val_y),
        (splits.test_x, splits.test_y),
    ]:
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert tuple(x.shape[1:]) == INPUT_SHAPE[1:] == (1, 40)
        assert len(x) == len(y)
        assert set(y.tolist()) == set(range(10))
    # The dataset's own normalization (over all 5000 signals): mean 0, standard deviation 1.
    everything = torch.cat([splits.train_x, splits.val_x, splits.test_x])
    assert abs(everything.mean().item()) < 0.01
    assert abs(everything.std().item() - 1.0) < 0.01


def test_splits_are_disjoint(splits: Mnist1dSplits) -> None:
    # The generated signals carry i.i.d. noise, so no two are equal: bytes identify samples.
    train, val, test = _rows(splits.train_x), _rows(splits.val_x), _rows(splits.test_x)
    assert len(train) + len(val) + len(test) == 5000
    assert not train & val
    assert not train & test
    assert not val & test


def test_splits_are_deterministic(splits: Mnist1dSplits) -> None:
    again = load_mnist1d_splits(0)
    for field in dataclasses.fields(Mnist1dSplits):
        assert torch.equal(getattr(splits, field.name), getattr(again, field.name)), field.name
    other = load_mnist1d_splits(1)
    assert not torch.equal(splits.val_x, other.val_x)
    # The test split is the dataset's own, whatever the seed; train + val is always the same set.
    assert torch.equal(splits.test_x, other.test_x)
    assert _rows(torch.cat([splits.train_x, splits.val_x])) == _rows(
        torch.cat([other.train_x, other.val_x])
    )


def test_validation_split_is_stratified(splits: Mnist1dSplits) -> None:
    train_counts = torch.bincount(splits.train_y, minlength=10).double()
    val_counts = torch.bincount(splits.val_y, minlength=10).double()
    expected = (train_counts + val_counts) * 500 / 4000
    assert (val_counts - expected).abs().max() <= 1.0


def test_loading_leaves_the_global_rngs_alone() -> None:
    mnist1d._generate.cache_clear()  # make the package generate (and reseed) again
    np.random.seed(1234)
    random.seed(1234)
    np_state, py_state = np.random.get_state(), random.getstate()
    load_mnist1d_splits(0)
    after_np = np.random.get_state()
    assert after_np[0] == np_state[0]
    assert np.array_equal(after_np[1], np_state[1])
    assert after_np[2:] == np_state[2:]
    assert random.getstate() == py_state


def test_splits_are_independent_copies(splits: Mnist1dSplits) -> None:
    fresh = load_mnist1d_splits(0)
    fresh.test_x.zero_()  # a caller writing into its tensors does not change anyone else's
    assert not torch.equal(load_mnist1d_splits(0).test_x, fresh.test_x)


# --- model ------------------------------------------------------------------------------------


def test_mnist1dnet_structure() -> None:
    model = Mnist1dNet()
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv1d)}
    assert len(convs) == 9
    assert {"stem.0", "blocks.0.conv1", "blocks.1.downsample.0", "blocks.2.conv2"} <= set(convs)
    assert len({m.out_channels for m in convs.values()}) == 3  # widths 32 / 64 / 128
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 300_000
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(*INPUT_SHAPE)).shape == (1, 10)
        assert model(torch.randn(5, 1, 40)).shape == (5, 10)


def test_every_conv_and_linear_is_a_compressible_layer() -> None:
    model = Mnist1dNet().eval()
    graph = discover(model, (torch.randn(*INPUT_SHAPE),))
    expected = {name for name, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Linear)}
    assert set(graph.layers) == expected
    assert len(expected) == 10
    assert {spec.kind for spec in graph.layers.values()} == {"conv1d", "linear"}
    assert not graph.trace_error
    assert not graph.kept  # every BatchNorm1d belongs to the conv before it
    assert graph.groups  # the residual stages are channel-prunable


def test_random_shift_moves_samples_by_at_most_three() -> None:
    x = torch.zeros(64, 1, 40)
    x[:, 0, 20] = 1.0
    shifted = mnist1d._random_shift(x, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal(shifted.sum(dim=(1, 2)), torch.ones(64))
    positions = shifted[:, 0].argmax(dim=1)
    assert positions.min() >= 17 and positions.max() <= 23
    assert len(set(positions.tolist())) > 1


def test_accuracy_on(splits: Mnist1dSplits) -> None:
    model = Mnist1dNet().train()
    acc = accuracy_on(model, "val", splits)
    assert 0.0 <= acc <= 1.0
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="unknown split"):
        accuracy_on(model, "validation", splits)


def test_short_training_is_deterministic(splits: Mnist1dSplits) -> None:
    small = dataclasses.replace(splits, train_x=splits.train_x[:64], train_y=splits.train_y[:64])
    a = train_mnist1d(splits=small, epochs=1, seed=3, progress=False)
    b = train_mnist1d(splits=small, epochs=1, seed=3, progress=False)
    assert not a.training
    _assert_same_state(a, b)


# --- task and registry ------------------------------------------------------------------------


def test_task_satisfies_the_protocol(splits: Mnist1dSplits) -> None:
    task = get_task("mnist1d")
    assert isinstance(task, Mnist1dTask)
    assert check_task(task) is task
    assert (task.name, task.metric, task.distill) == ("mnist1d", "accuracy", "kl")
    assert task.calibration().shape == (256, 1, 40)
    assert task.calibration(8).shape == (8, 1, 40)

    first = [y for _, y in task.train_batches(seed=5)]
    again = [y for _, y in task.train_batches(seed=5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert sum(len(y) for y in first) == 3500
    x, _ = next(iter(task.train_batches(seed=5, batch_size=16)))
    assert x.shape == (16, 1, 40)

    model = Mnist1dNet().eval()
    for split in ("val", "test"):
        assert 0.0 <= task.score(model, split) <= 1.0
    assert task.score(model) == accuracy_on(model, "test", splits)


def test_unknown_task_lists_every_name() -> None:
    with pytest.raises(ValueError, match="the zoo has: digits, mnist1d"):
        get_task("mnist2d")


def test_registry_entry_builds_the_architecture_without_training(
    fake_training: list[int],
) -> None:
    entry = zoo.get("mnist1d")
    assert entry.task == "mnist1d"
    assert entry.input_shape == (1, 1, 40)
    assert entry.description
    model = entry.build_architecture()
    assert isinstance(model, Mnist1dNet) and not model.training
    assert fake_training == []


# --- cache (fast: training stubbed out) -------------------------------------------------------


def test_cache_written_then_reused(cache_dir: Path, fake_training: list[int]) -> None:
    first = pretrained_mnist1d(progress=False)
    assert (cache_dir / CACHE_FILENAME).is_file()
    assert not first.training
    second = pretrained_mnist1d(progress=False)
    assert fake_training == [1]  # loaded, not retrained
    _assert_same_state(first, second)
    assert sorted(os.listdir(cache_dir)) == [CACHE_FILENAME, f"{CACHE_FILENAME}.lock"]


def test_explicit_cache_dir_overrides_env(
    tmp_path: Path, cache_dir: Path, fake_training: list[int]
) -> None:
    explicit = tmp_path / "explicit"
    pretrained_mnist1d(cache_dir=explicit, progress=False)
    assert (explicit / CACHE_FILENAME).is_file()
    assert not cache_dir.exists()


@pytest.mark.parametrize(
    "payload",
    [b"not a torch file", None],
    ids=["garbage", "digits-state-dict"],
)
def test_unreadable_cache_is_replaced(
    cache_dir: Path,
    fake_training: list[int],
    caplog: pytest.LogCaptureFixture,
    payload: bytes | None,
) -> None:
    cache_dir.mkdir(parents=True)
    path = cache_dir / CACHE_FILENAME
    if payload is None:  # a valid torch file of another model's weights
        torch.save(zoo.get("digits").build_architecture().state_dict(), path)
    else:
        path.write_bytes(payload)
    with caplog.at_level(logging.WARNING, logger="compplan"):
        model = pretrained_mnist1d(progress=False)
    assert fake_training == [1]
    assert [r.levelno for r in caplog.records if "unreadable" in r.getMessage()] == [
        logging.WARNING
    ]
    reloaded = Mnist1dNet()
    reloaded.load_state_dict(torch.load(path, weights_only=True))
    _assert_same_state(model, reloaded)


# --- real training (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_pretrained_mnist1d_accuracy() -> None:
    # The user's cache (or $COMPPLAN_CACHE_DIR): trains once, about half a minute on 2 cores.
    start = time.perf_counter()
    model = zoo.get("mnist1d").build()
    assert not model.training
    assert accuracy_on(model, "test") >= 0.90, f"after {time.perf_counter() - start:.0f} s"
