"""EfficientNet-B0 at full size (5.3M parameters, 1x3x224x224), random weights: a public
architecture in a model spec of a user's own, written from the paper's table with zoo's MBConv.

    compplan search --model benchmarks/models/efficientnet_b0.py:build \
        --input-shape 1,3,224,224 --size-budget x8 --protect-ends no
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.families import MBConv, _conv_bn

# (expand, kernel, stride, out channels, blocks): the paper's Table 1.
_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class EfficientNetB0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        total = sum(stage[-1] for stage in _STAGES)
        self.stem = _conv_bn(3, 32, 3, stride=2, act=nn.SiLU)
        blocks, cin, index = [], 32, 0
        for expand, kernel, stride, cout, repeats in _STAGES:
            for i in range(repeats):
                drop = 0.2 * index / total
                first = i == 0
                stride_i = stride if first else 1
                block = MBConv(cin, cout, expand=expand, kernel=kernel, stride=stride_i, drop=drop)
                blocks.append(block)
                cin, index = cout, index + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, 1280, 1, act=nn.SiLU)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)
        for module in self.modules():  # torchvision's initialisation (PyTorch's default fades out)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / module.out_features**0.5
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))


def build() -> nn.Module:
    """The model, seeded (give `--input-shape 1,3,224,224`)."""
    torch.manual_seed(0)
    return EfficientNetB0()
