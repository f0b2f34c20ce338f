"""BatchNorm re-estimation: exact statistics, nothing else touched."""

from __future__ import annotations

import torch
from torch import nn

from engine.calibrate import reestimate_batchnorm_


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8, momentum=0.3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def test_statistics_are_the_exact_average_over_the_calibration_set():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(96, 1, 6, 6) * 3 + 1
    assert reestimate_batchnorm_(model, x, batch_size=32) == 1
    with torch.no_grad():
        features = model.conv(x)
    # the mean of per-batch means of equal-size batches is the overall mean
    assert torch.allclose(model.bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack(
        [b.var((0, 2, 3), unbiased=True) for b in torch.split(features, 32)]
    )
    assert torch.allclose(model.bn.running_var, per_batch_var.mean(0), atol=1e-4)
    assert model.bn.momentum == 0.3 and not model.training and not model.drop.training


def test_modes_are_restored_and_weights_untouched():
    model = Net().train()
    model.fc.eval()
    weights = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if "running" not in k and "num_batches" not in k
    }
    reestimate_batchnorm_(model, torch.randn(10, 1, 6, 6))
    assert model.training and model.bn.training and not model.fc.training
    assert all(torch.equal(weights[k], model.state_dict()[k]) for k in weights)
    assert reestimate_batchnorm_(nn.Linear(2, 2), torch.randn(3, 2)) == 0
