"""The MNIST-1D task's own: the dataset's normalization and test split, the global RNGs,
Mnist1dNet's layers, 1-D shifts and real training. What it shares with digits is in
test_classifiers.py."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from search_spaces import discover
from zoo import mnist1d
from zoo.mnist1d import INPUT_SHAPE, Mnist1dNet, Mnist1dSplits, accuracy_on, load_mnist1d_splits


@pytest.fixture(scope="module")
def splits() -> Mnist1dSplits:
    return load_mnist1d_splits(0)


# --- data -------------------------------------------------------------------------------------


def test_split_sizes_labels_and_normalization(splits: Mnist1dSplits) -> None:
    assert [len(splits.train_y), len(splits.val_y), len(splits.test_y)] == [3500, 500, 1000]
    assert INPUT_SHAPE[1:] == (1, 40)
    for y in (splits.train_y, splits.val_y, splits.test_y):
        assert set(y.tolist()) == set(range(10))
    # The dataset's own normalization (over all 5000 signals): mean 0, standard deviation 1.
    everything = torch.cat([splits.train_x, splits.val_x, splits.test_x])
    assert abs(everything.mean().item()) < 0.01
    assert abs(everything.std().item() - 1.0) < 0.01


def test_the_test_split_is_the_datasets_own(splits: Mnist1dSplits) -> None:
    other = load_mnist1d_splits(1)
    assert not torch.equal(splits.val_x, other.val_x)
    # The test split is the dataset's own, whatever the seed; train + val is always the same set.
    assert torch.equal(splits.test_x, other.test_x)

    def rows(x: torch.Tensor) -> set[bytes]:
        return {row.numpy().tobytes() for row in x.flatten(1)}

    assert rows(torch.cat([splits.train_x, splits.val_x])) == rows(
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


# --- real training (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_pretrained_mnist1d_accuracy() -> None:
    # The user's cache (or $COMPPLAN_CACHE_DIR): trains once, about half a minute on 2 cores.
    start = time.perf_counter()
    model = zoo.get("mnist1d").build()
    assert not model.training
    assert accuracy_on(model, "test") >= 0.90, f"after {time.perf_counter() - start:.0f} s"
