"""A user's own project, written into a test's folder: a model file, a Task file, a labelled data
file, and a small token-id transformer with an inputs file. Nothing here is compplan's: the files
import only torch and numpy, as a stranger's would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["BLOBS_CLASSES", "write_project"]

BLOBS_CLASSES = 4

USER_NET = '''
"""A user's classifier of 16-feature points into 4 blobs, trained on first build."""
import torch
from torch import nn


def blobs(n=800, seed=0):
    centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, 4, (n,), generator=g)
    return centers[y] + torch.randn(n, 16, generator=g), y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.body(x))


def build():
    torch.manual_seed(0)
    net = Net()
    x, y = blobs()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(150):
        rows = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(net(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


class BlobsTask:
    """The user's Task: their own split and metric."""

    name = "blobs"
    metric = "accuracy"

    def __init__(self):
        x, y = blobs(1000, seed=7)
        self.x, self.y = x, y

    def train_batches(self, seed=0):
        order = torch.randperm(600, generator=torch.Generator().manual_seed(seed))
        return [(self.x[i], self.y[i]) for i in order.split(64)]

    def calibration(self):
        return self.x[:256]

    def score(self, model, split="test"):
        rows = slice(600, 800) if split == "val" else slice(800, 1000)
        with torch.no_grad():
            predicted = model(self.x[rows]).argmax(-1)
        return (predicted == self.y[rows]).float().mean().item()


def make_task():
    return BlobsTask()


def not_a_task():
    return 42
'''

TOKEN_ENCODER = '''
"""A user's small transformer encoder over token ids; its outputs are hidden states."""
import torch
from torch import nn


class TokenEncoder(nn.Module):
    def __init__(self, vocab=50, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids):
        return self.proj(self.encoder(self.embed(ids)))


def build():
    torch.manual_seed(0)
    return TokenEncoder().eval()
'''


def write_project(folder: Path) -> dict[str, Path]:
    """Write the project into `folder`; returns its files by role: "net" (usernet.py, build and
    make_task), "data" (blobs.npz: x, y), "no_x" (an .npz without x), "float_labels",
    "wrong_classes" (labels 0..9 for 4 outputs), "wrong_shape" (x of 12 features), "encoder"
    (encoder.py:build), "ids" (ids.npz: int32 token ids), "float_ids" (the same as floats)."""
    folder.mkdir(parents=True, exist_ok=True)
    net = folder / "usernet.py"
    net.write_text(USER_NET)
    encoder = folder / "encoder.py"
    encoder.write_text(TOKEN_ENCODER)
    # The same points as usernet.blobs(): what the model was trained on.
    centers = torch.randn(BLOBS_CLASSES, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, BLOBS_CLASSES, (800,), generator=g)
    x = (centers[y] + torch.randn(800, 16, generator=g)).numpy()
    files = {"net": net, "encoder": encoder}
    arrays = {
        "data": {"x": x, "y": y.numpy()},
        "no_x": {"inputs": x, "y": y.numpy()},
        "float_labels": {"x": x, "y": y.numpy().astype(np.float32)},
        "wrong_classes": {"x": x, "y": (y.numpy() * 3) % 10},
        "wrong_shape": {"x": x[:, :12], "y": y.numpy()},
    }
    ids = torch.randint(0, 50, (120, 10), generator=g).numpy().astype(np.int32)
    arrays["ids"] = {"x": ids}
    arrays["float_ids"] = {"x": ids.astype(np.float32)}
    for name, content in arrays.items():
        files[name] = folder / f"{name}.npz"
        np.savez(files[name], **content)
    return files
