"""Tasks on the user's arrays and task specs: splits, file formats, scores, the trust rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.task import TaskError, check_task, mean_cosine, top1_agreement
from engine.task_data import FidelityTask, LabelledTask, seeded_split
from engine.task_spec import (
    is_code_spec,
    load_with_task,
    portable_spec,
    resolve_task,
    task_spec_from,
)
from search_spaces.data_file import DataFileError, read_arrays
from search_spaces.model_spec import ModelSpecError
from zoo.tasks import DigitsTask


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_the_seeded_split_is_disjoint_complete_and_a_function_of_the_seed():
    train, val, test = seeded_split(100, seed=3)
    assert len(val) == len(test) == 15 and len(train) == 70
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(100))
    again = seeded_split(100, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (train, val, test), strict=True))
    assert not torch.equal(seeded_split(100, seed=4)[1], val)
    with pytest.raises(TaskError, match="at least 3"):
        seeded_split(2)


def test_given_held_out_splits_are_used_and_only_missing_ones_carved(tmp_path):
    x, y = np.random.rand(40, 6).astype(np.float32), np.arange(40) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:5], y_test=y[:5])
    task = LabelledTask.from_file(tmp_path / "d.npz")
    assert torch.equal(task.splits["test"][0], torch.from_numpy(x[:5]))
    assert len(task.splits["val"][0]) == 6 and len(task.splits["train"][0]) == 34


def test_a_pt_file_of_tensors_reads_like_an_npz(tmp_path):
    x, y = torch.rand(30, 6, dtype=torch.float64), torch.arange(30, dtype=torch.int32) % 3
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    arrays = read_arrays(tmp_path / "d.pt")
    assert arrays["x"].dtype == torch.float32 and arrays["y"].dtype == torch.int64
    torch.save([x, y], tmp_path / "list.pt")
    with pytest.raises(DataFileError, match="save a dict of arrays"):
        read_arrays(tmp_path / "list.pt")


def test_a_pickled_npz_is_refused_not_run(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.array([{"code": 1}], dtype=object))
    with pytest.raises(DataFileError, match="not a readable"):
        read_arrays(tmp_path / "p.npz")


def test_labelled_task_scores_accuracy_and_checks_labels_against_outputs(tmp_path):
    model = _classifier()
    x = torch.randn(60, 6)
    y = model(x).argmax(-1)  # the model's own predictions: accuracy 1
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    task = resolve_task(f"data:{tmp_path / 'd.npz'}", model)
    assert task.metric == "accuracy" and task.score(model, "test") == 1.0
    assert check_task(task) is task
    np.savez(tmp_path / "bad.npz", x=x.numpy(), y=(y + 3).numpy())
    with pytest.raises(TaskError, match=r"labels run from 3 to .* but the model outputs 3 classes"):
        resolve_task(f"data:{tmp_path / 'bad.npz'}", model)


def test_fidelity_task_picks_agreement_for_logits_and_cosine_for_hidden_states(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.random.rand(50, 6).astype(np.float32))
    logits = resolve_task(f"inputs:{tmp_path / 'x.npz'}", _classifier())
    assert (logits.metric, logits.distill) == ("agreement", "kl")
    assert logits.score(_classifier(), "val") == 1.0  # the original agrees with itself
    hidden = nn.Sequential(nn.Linear(6, 8), nn.Unflatten(1, (2, 4))).eval()  # (B, 2, 4)
    task = resolve_task(f"inputs:{tmp_path / 'x.npz'}", hidden)
    assert (task.metric, task.distill) == ("cosine", "cosine")
    assert task.score(hidden, "test") == pytest.approx(1.0)
    other = nn.Sequential(nn.Linear(6, 8), nn.Unflatten(1, (2, 4))).eval()
    assert task.score(other, "test") < 0.9
    forced = resolve_task(f"inputs:{tmp_path / 'x.npz'}", _classifier(), distill="mse")
    assert forced.metric == "cosine"


def test_fidelity_holds_tensors_only(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.random.rand(20, 6).astype(np.float32))
    task = FidelityTask.from_file(_classifier(), tmp_path / "x.npz")
    assert not any(isinstance(v, nn.Module) for v in vars(task).values())


def test_scores():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert top1_agreement(a, a.flip(1)) == 0.0 and top1_agreement(a, 2 * a) == 1.0
    assert mean_cosine(a, 3 * a) == pytest.approx(1.0) and mean_cosine(a, -a) == pytest.approx(-1)


def test_code_specs_from_a_study_or_file_run_only_when_trusted(tmp_path):
    (tmp_path / "t.py").write_text(
        "from zoo.tasks import get_task\n\ndef make():\n    return get_task('digits')\n"
    )
    spec = f"{tmp_path / 't.py'}:make"
    assert is_code_spec(spec) and not is_code_spec("zoo:digits")
    assert not is_code_spec("data:/x.npz")
    with pytest.raises(TaskError, match="--trust-specs"):
        resolve_task(spec, trusted=False, source="study 's'")
    assert isinstance(resolve_task(spec, trusted=True), DigitsTask)


def test_specs_from_flags():
    assert task_spec_from() is None
    assert task_spec_from(data="d.npz").startswith("data:/")  # made absolute
    assert task_spec_from(task="zoo:digits") == "zoo:digits"
    assert portable_spec("pkg.mod:make") == "pkg.mod:make"
    with pytest.raises(TaskError, match="give one of"):
        task_spec_from(data="d.npz", inputs="i.npz")


def test_a_callable_task_gives_example_inputs_of_its_own(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n    return nn.Linear(6, 3)\n\n"
        "class T:\n    name, metric = 't', 'accuracy'\n"
        "    def train_batches(self, seed=0):\n        return [torch.randn(4, 6)]\n"
        "    def calibration(self):\n        return torch.randn(8, 6)\n"
        "    def score(self, model, split='test'):\n        return 0.5\n\n"
        "def make():\n    return T()\n"
    )
    loaded, spec, task = load_with_task(f"{tmp_path / 'm.py'}:build", f"{tmp_path / 'm.py'}:make")
    assert tuple(loaded.example_inputs[0].shape) == (1, 6) and task.name == "t"
    with pytest.raises(ModelSpecError, match="disagrees with the inputs' shape"):
        load_with_task(f"{tmp_path / 'm.py'}:build", spec, input_shape="1,5")
    loaded, _, _ = load_with_task(f"{tmp_path / 'm.py'}:build", spec, input_shape="4,6")
    assert tuple(loaded.example_inputs[0].shape) == (4, 6)  # the batch asked for


def test_a_data_file_is_read_once_and_again_when_it_changes(tmp_path):
    # Example inputs and the task both read the file; the second read comes from memory.
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32))
    first, again = read_arrays(tmp_path / "d.npz"), read_arrays(tmp_path / "d.npz")
    assert again["x"] is first["x"] and again is not first
    np.savez(tmp_path / "d.npz", x=np.ones((5, 2), np.float32))
    assert read_arrays(tmp_path / "d.npz")["x"].shape == (5, 2)
