"""The digits task: data splits, DigitsNet structure, training and the on-disk cache."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo import digits
from zoo.digits import (
    CACHE_FILENAME,
    INPUT_SHAPE,
    DigitsNet,
    DigitsSplits,
    accuracy_on,
    evaluate,
    load_digits_splits,
    pretrained_digits,
    train_digits,
)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def splits() -> DigitsSplits:
    return load_digits_splits(0)


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
        return DigitsNet().eval()

    monkeypatch.setattr(digits, "train_digits", _fake_train)
    return calls


# --- data -------------------------------------------------------------------------------------


def test_split_shapes_and_types(splits: DigitsSplits) -> None:
    sizes = [len(splits.train_y), len(splits.val_y), len(splits.test_y)]
    assert sum(sizes) == 1797
    assert sizes == [1257, 270, 270]  # ~70/15/15
    for x, y in [
        (splits.train_x, splits.train_y),
        (splits.val_x, splits.val_y),
        (splits.test_x, splits.test_y),
    ]:
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert tuple(x.shape[1:]) == INPUT_SHAPE[1:]
        assert len(x) == len(y)
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert splits.train_x.max() == 1.0  # scaled by /16, not left in 0..16


def test_splits_are_disjoint(splits: DigitsSplits) -> None:
    # The dataset contains no duplicate images, so image bytes identify samples.
    train, val, test = _rows(splits.train_x), _rows(splits.val_x), _rows(splits.test_x)
    assert len(train) + len(val) + len(test) == 1797
    assert not train & val
    assert not train & test
    assert not val & test


def test_splits_are_deterministic(splits: DigitsSplits) -> None:
    again = load_digits_splits(0)
    for field in dataclasses.fields(DigitsSplits):
        assert torch.equal(getattr(splits, field.name), getattr(again, field.name)), field.name
    other = load_digits_splits(1)
    assert not torch.equal(splits.test_x, other.test_x)


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
    n_params = sum(p.numel() for p in model.parameters())
    assert 250_000 <= n_params <= 1_000_000
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(*INPUT_SHAPE)).shape == (1, 10)
        assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_random_shift_moves_pixels_by_at_most_one() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 4, 4] = 1.0
    shifted = digits._random_shift(x, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))
    ys, xs = shifted[:, 0].nonzero(as_tuple=True)[1:]
    assert ys.min() >= 3 and ys.max() <= 5 and xs.min() >= 3 and xs.max() <= 5
    assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) > 1


def test_evaluate_and_accuracy_on(splits: DigitsSplits) -> None:
    model = DigitsNet().train()
    acc = evaluate(model, splits.val_x, splits.val_y, batch_size=100)
    assert 0.0 <= acc <= 1.0
    assert model.training  # mode restored
    assert accuracy_on(model.eval(), "val", splits) == acc
    with pytest.raises(ValueError, match="unknown split"):
        accuracy_on(model, "validation", splits)


def test_short_training_is_deterministic(splits: DigitsSplits) -> None:
    small = dataclasses.replace(splits, train_x=splits.train_x[:64], train_y=splits.train_y[:64])
    a = train_digits(splits=small, epochs=1, seed=3, progress=False)
    b = train_digits(splits=small, epochs=1, seed=3, progress=False)
    assert not a.training
    _assert_same_state(a, b)


# --- cache (fast: training stubbed out) -------------------------------------------------------


def test_cache_written_then_reused(cache_dir: Path, fake_training: list[int]) -> None:
    first = pretrained_digits(progress=False)
    path = cache_dir / CACHE_FILENAME
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not first.training
    assert fake_training == [1]
    second = pretrained_digits(progress=False)
    assert fake_training == [1]  # loaded, not retrained
    assert not second.training
    _assert_same_state(first, second)
    # No temp files are left behind; only the cache and its lock file.
    assert sorted(os.listdir(cache_dir)) == [CACHE_FILENAME, f"{CACHE_FILENAME}.lock"]


def test_concurrent_first_use_trains_once(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, fake_training: list[int]
) -> None:
    fake = digits.train_digits

    def _slow_fake(model: nn.Module | None = None, **kwargs: object) -> nn.Module:
        # Long enough that, without the lock, the second caller would also start training.
        time.sleep(0.3)
        return fake(model, **kwargs)

    monkeypatch.setattr(digits, "train_digits", _slow_fake)
    results: list[nn.Module] = []
    threads = [
        threading.Thread(target=lambda: results.append(pretrained_digits(progress=False)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_training == [1]
    assert len(results) == 2
    _assert_same_state(results[0], results[1])


def test_explicit_cache_dir_overrides_env(
    tmp_path: Path, cache_dir: Path, fake_training: list[int]
) -> None:
    explicit = tmp_path / "explicit"
    pretrained_digits(cache_dir=explicit, progress=False)
    assert (explicit / CACHE_FILENAME).is_file()
    assert not cache_dir.exists()


def test_default_cache_dir_uses_env(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert digits.default_cache_dir() == cache_dir
    monkeypatch.delenv("COMPPLAN_CACHE_DIR")
    assert digits.default_cache_dir().name.lower() == "compplan"


@pytest.mark.parametrize(
    "payload",
    [b"", b"not a torch file", b"PK\x03\x04 truncated zip"],
    ids=["empty", "garbage", "truncated"],
)
def test_corrupt_cache_is_replaced(
    cache_dir: Path,
    fake_training: list[int],
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
) -> None:
    cache_dir.mkdir(parents=True)
    path = cache_dir / CACHE_FILENAME
    path.write_bytes(payload)
    with caplog.at_level(logging.WARNING, logger="compplan"):
        model = pretrained_digits(progress=False)
    assert fake_training == [1]
    assert [r.levelno for r in caplog.records if "unreadable" in r.getMessage()] == [
        logging.WARNING
    ]
    reloaded = torch.load(path, weights_only=True)
    _assert_same_state(model, _from_state(reloaded))


def test_wrong_state_dict_in_cache_is_replaced(
    cache_dir: Path, fake_training: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir.mkdir(parents=True)
    torch.save({"unexpected": torch.zeros(1)}, cache_dir / CACHE_FILENAME)
    with caplog.at_level(logging.WARNING, logger="compplan"):
        pretrained_digits(progress=False)
    assert fake_training == [1]
    assert caplog.records
    DigitsNet().load_state_dict(torch.load(cache_dir / CACHE_FILENAME, weights_only=True))


def _from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    model = DigitsNet()
    model.load_state_dict(state)
    return model


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
    _assert_same_state(model, again)
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert load_seconds < train_seconds
    assert accuracy_on(again, "test") == accuracy_on(model, "test")
