"""The digits task's own: its scaling and stratified split, DigitsNet's convolutions, 2-D shifts,
the cache folder and real training. What it shares with MNIST-1D is in test_classifiers.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo import digits
from zoo.digits import (
    CACHE_FILENAME,
    DigitsNet,
    DigitsSplits,
    accuracy_on,
    load_digits_splits,
    pretrained_digits,
)


@pytest.fixture(scope="module")
def splits() -> DigitsSplits:
    return load_digits_splits(0)


# --- data -------------------------------------------------------------------------------------


def test_split_sizes_and_scaling(splits: DigitsSplits) -> None:
    sizes = [len(splits.train_y), len(splits.val_y), len(splits.test_y)]
    assert sum(sizes) == 1797
    assert sizes == [1257, 270, 270]  # ~70/15/15
    for x in (splits.train_x, splits.val_x, splits.test_x):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert splits.train_x.max() == 1.0  # scaled by /16, not left in 0..16


def test_splits_are_stratified(splits: DigitsSplits) -> None:
    total = torch.bincount(
        torch.cat([splits.train_y, splits.val_y, splits.test_y]), minlength=10
    ).double()
    for y in (splits.train_y, splits.val_y, splits.test_y):
        counts = torch.bincount(y, minlength=10).double()
        expected = total * len(y) / total.sum()
        # Stratification puts each class within one sample of its proportional share.
        assert (counts - expected).abs().max() <= 1.0


# --- model ------------------------------------------------------------------------------------


def test_digitsnet_structure() -> None:
    model = DigitsNet()
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 8
    assert "stem.0" in convs
    assert "blocks.0.conv1" in convs
    assert any(name.endswith("downsample.0") for name in convs)


def test_random_shift_moves_pixels_by_at_most_one() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 4, 4] = 1.0
    shifted = digits._random_shift(x, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))
    ys, xs = shifted[:, 0].nonzero(as_tuple=True)[1:]
    assert ys.min() >= 3 and ys.max() <= 5 and xs.min() >= 3 and xs.max() <= 5
    assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) > 1


# --- cache ------------------------------------------------------------------------------------


def test_default_cache_dir_uses_env(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert digits.default_cache_dir() == cache_dir
    monkeypatch.delenv("COMPPLAN_CACHE_DIR")
    assert digits.default_cache_dir().name.lower() == "compplan"


# --- real training (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_pretrained_digits_accuracy_and_cache(cache_dir: Path) -> None:
    start = time.perf_counter()
    model = zoo.get("digits").build()
    train_seconds = time.perf_counter() - start
    path = cache_dir / CACHE_FILENAME
    assert path.is_file()
    assert not model.training
    assert accuracy_on(model, "test") >= 0.97

    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    again = pretrained_digits(progress=False)
    load_seconds = time.perf_counter() - start
    state, again_state = model.state_dict(), again.state_dict()
    assert state.keys() == again_state.keys()
    for key in state:
        assert torch.equal(state[key], again_state[key]), key
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert load_seconds < train_seconds
    assert accuracy_on(again, "test") == accuracy_on(model, "test")
