"""What the digits and MNIST-1D tasks share, tested on both: disjoint, seeded splits, networks of
ten logits, accuracy, deterministic training, the tasks and registry entries, and the on-disk
cache. What is particular to one task is in test_digits.py and test_mnist1d.py."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import zoo
from engine.task import check_task
from zoo import digits, mnist1d
from zoo.digits import evaluate
from zoo.tasks import DigitsTask, Mnist1dTask, get_task


@dataclass(frozen=True)
class Case:
    """One of the two tasks: its module, network, task type and expected numbers."""

    name: str
    module: ModuleType
    net: type[nn.Module]
    task_type: type
    input_shape: tuple[int, ...]  # the module's INPUT_SHAPE (batch 1)
    sizes: tuple[int, int, int]  # train / val / test
    params: tuple[int, int]  # bounds on the network's parameter count
    seed_dependent: str  # a split that another seed changes
    other: str  # another zoo model, whose weights this one's cache must refuse

    def load_splits(self, seed: int):
        return getattr(self.module, f"load_{self.name}_splits")(seed)

    def train(self, **kwargs: object) -> nn.Module:
        # Looked up when called, as the module's own pretrained_* does.
        return getattr(self.module, f"train_{self.name}")(**kwargs)

    def pretrained(self, **kwargs: object) -> nn.Module:
        return getattr(self.module, f"pretrained_{self.name}")(**kwargs)

    def stub_training(self, monkeypatch: pytest.MonkeyPatch, stub: object) -> None:
        monkeypatch.setattr(self.module, f"train_{self.name}", stub)


# name, module, net, task type, input shape, split sizes, parameter bounds, seed-dependent, other
CASES = {
    "digits": Case(
        "digits", digits, digits.DigitsNet, DigitsTask, (1, 1, 8, 8), (1257, 270, 270),
        (250_000, 1_000_000), "test_x", "mnist1d",
    ),
    "mnist1d": Case(
        "mnist1d", mnist1d, mnist1d.Mnist1dNet, Mnist1dTask, (1, 1, 40), (3500, 500, 1000),
        (100_000, 300_000), "val_x", "digits",
    ),
}  # fmt: skip


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture(scope="module")
def splits(case: Case):
    return case.load_splits(0)


@pytest.fixture
def fake_training(case: Case, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace training with an instant stub; returns a list that grows by one per call."""
    calls: list[int] = []

    def _fake_train(model: nn.Module | None = None, **kwargs: object) -> nn.Module:
        calls.append(1)
        torch.manual_seed(len(calls))
        return case.net().eval()

    case.stub_training(monkeypatch, _fake_train)
    return calls


# --- data -------------------------------------------------------------------------------------


def test_split_sizes_and_types(case: Case, splits) -> None:
    sizes = (len(splits.train_y), len(splits.val_y), len(splits.test_y))
    assert sizes == case.sizes
    for x, y in [
        (splits.train_x, splits.train_y),
        (splits.val_x, splits.val_y),
        (splits.test_x, splits.test_y),
    ]:
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert tuple(x.shape[1:]) == case.input_shape[1:]
        assert len(x) == len(y)


def test_splits_are_disjoint(case: Case, splits) -> None:
    # No two samples are equal (digits has no duplicate images; MNIST-1D's signals carry i.i.d.
    # noise), so their bytes identify them.
    train, val, test = _rows(splits.train_x), _rows(splits.val_x), _rows(splits.test_x)
    assert len(train) + len(val) + len(test) == sum(case.sizes)
    assert not train & val
    assert not train & test
    assert not val & test


def test_splits_are_deterministic(case: Case, splits) -> None:
    again = case.load_splits(0)
    for field in dataclasses.fields(splits):
        assert torch.equal(getattr(splits, field.name), getattr(again, field.name)), field.name
    other = case.load_splits(1)
    varies = case.seed_dependent
    assert not torch.equal(getattr(splits, varies), getattr(other, varies))


# --- model ------------------------------------------------------------------------------------


def test_net_maps_inputs_to_ten_logits(case: Case) -> None:
    model = case.net()
    n_params = sum(p.numel() for p in model.parameters())
    low, high = case.params
    assert low <= n_params <= high
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    input_shape = case.input_shape
    assert input_shape == case.module.INPUT_SHAPE
    with torch.no_grad():
        assert model.eval()(torch.randn(*input_shape)).shape == (1, 10)
        assert model(torch.randn(5, *input_shape[1:])).shape == (5, 10)


def test_evaluate_and_accuracy_on(case: Case, splits) -> None:
    accuracy_on = case.module.accuracy_on
    model = case.net().train()
    acc = accuracy_on(model, "val", splits)
    assert 0.0 <= acc <= 1.0
    assert model.training  # mode restored
    assert evaluate(model, splits.val_x, splits.val_y, batch_size=100) == acc
    assert model.training  # mode restored
    assert accuracy_on(model.eval(), "val", splits) == acc
    with pytest.raises(ValueError, match="unknown split"):
        accuracy_on(model, "validation", splits)


def test_short_training_is_deterministic(case: Case, splits) -> None:
    small = dataclasses.replace(splits, train_x=splits.train_x[:64], train_y=splits.train_y[:64])
    a = case.train(splits=small, epochs=1, seed=3, progress=False)
    b = case.train(splits=small, epochs=1, seed=3, progress=False)
    assert not a.training
    _assert_same_state(a, b)


# --- task and registry ------------------------------------------------------------------------


def test_task_satisfies_the_protocol(case: Case, splits) -> None:
    task = get_task(case.name)
    assert isinstance(task, case.task_type)
    assert check_task(task) is task
    assert (task.name, task.metric, task.distill) == (case.name, "accuracy", "kl")
    assert task.spec == f"zoo:{case.name}"  # what studies and exported files record
    input_shape = case.input_shape[1:]
    assert task.calibration().shape == (256, *input_shape)
    assert task.calibration(8).shape == (8, *input_shape)

    first = [y for _, y in task.train_batches(seed=5)]
    again = [y for _, y in task.train_batches(seed=5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert sum(len(y) for y in first) == case.sizes[0]
    x, _ = next(iter(task.train_batches(seed=5, batch_size=16)))
    assert x.shape == (16, *input_shape)

    model = case.net().eval()
    for split in ("val", "test"):
        assert 0.0 <= task.score(model, split) <= 1.0
    assert task.score(model) == case.module.accuracy_on(model, "test", splits)


def test_task_specs_are_the_recorded_ones() -> None:
    assert get_task("digits").spec == "zoo:digits"
    assert get_task("mnist1d").spec == "zoo:mnist1d"


def test_unknown_task_lists_every_name() -> None:
    with pytest.raises(ValueError, match="the zoo has: digits, mnist1d"):
        get_task("mnist2d")


def test_registry_entry_builds_the_architecture_without_training(
    case: Case, fake_training: list[int]
) -> None:
    entry = zoo.get(case.name)
    assert entry.task == case.name
    assert entry.input_shape == case.input_shape
    assert entry.description
    model = entry.build_architecture()
    assert isinstance(model, case.net) and not model.training
    assert fake_training == []


# --- cache (fast: training stubbed out) -------------------------------------------------------


def test_cache_written_then_reused(case: Case, cache_dir: Path, fake_training: list[int]) -> None:
    filename = case.module.CACHE_FILENAME
    assert filename == f"{case.name}-v1.pt"
    first = case.pretrained(progress=False)
    path = cache_dir / filename
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not first.training
    assert fake_training == [1]
    second = case.pretrained(progress=False)
    assert fake_training == [1]  # loaded, not retrained
    assert not second.training
    _assert_same_state(first, second)
    # No temp files are left behind; only the cache and its lock file.
    assert sorted(os.listdir(cache_dir)) == [filename, f"{filename}.lock"]


def test_concurrent_first_use_trains_once(
    case: Case, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, fake_training: list[int]
) -> None:
    fake = getattr(case.module, f"train_{case.name}")

    def _slow_fake(model: nn.Module | None = None, **kwargs: object) -> nn.Module:
        # Long enough that, without the lock, the second caller would also start training.
        time.sleep(0.3)
        return fake(model, **kwargs)

    case.stub_training(monkeypatch, _slow_fake)
    results: list[nn.Module] = []
    threads = [
        threading.Thread(target=lambda: results.append(case.pretrained(progress=False)))
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
    case: Case, tmp_path: Path, cache_dir: Path, fake_training: list[int]
) -> None:
    explicit = tmp_path / "explicit"
    case.pretrained(cache_dir=explicit, progress=False)
    assert (explicit / case.module.CACHE_FILENAME).is_file()
    assert not cache_dir.exists()


@pytest.mark.parametrize(
    "payload",
    [b"", b"not a torch file", b"PK\x03\x04 truncated zip", "wrong keys", "other model"],
    ids=["empty", "garbage", "truncated", "wrong-state-dict", "other-models-state-dict"],
)
def test_unreadable_cache_is_replaced(
    case: Case,
    cache_dir: Path,
    fake_training: list[int],
    caplog: pytest.LogCaptureFixture,
    payload: bytes | str,
) -> None:
    cache_dir.mkdir(parents=True)
    path = cache_dir / case.module.CACHE_FILENAME
    if payload == "wrong keys":
        torch.save({"unexpected": torch.zeros(1)}, path)
    elif payload == "other model":  # a valid torch file of another model's weights
        torch.save(zoo.get(case.other).build_architecture().state_dict(), path)
    else:
        path.write_bytes(payload)
    with caplog.at_level(logging.WARNING, logger="compplan"):
        model = case.pretrained(progress=False)
    assert fake_training == [1]
    assert caplog.records
    assert [r.levelno for r in caplog.records if "unreadable" in r.getMessage()] == [
        logging.WARNING
    ]
    assert any(f"cached {case.name} model" in r.getMessage() for r in caplog.records)
    reloaded = case.net()
    reloaded.load_state_dict(torch.load(path, weights_only=True))
    _assert_same_state(model, reloaded)
