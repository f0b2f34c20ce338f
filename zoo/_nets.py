"""The small residual networks of the zoo's classifiers: 2-D for digits, 1-D for MNIST-1D.

:class:`SmallResNet` is a conv/BN/ReLU stem, a sequence of :class:`ResidualBlockNd`, global
average pooling and a linear classifier; :class:`zoo.digits.DigitsNet` and
:class:`zoo.mnist1d.Mnist1dNet` choose its dimensionality, stem kernel and stages. Modules are
built (and so initialized from torch's global RNG) in the order ``stem``, ``blocks``, ``pool``,
``fc``, then convolutions are re-initialized (Kaiming, fan-out) and BatchNorms set to 1 / 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

__all__ = ["ResidualBlockNd", "SmallResNet"]

# dims -> (convolution, batch norm, adaptive average pool)
_LAYERS: dict[int, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d),
}


class ResidualBlockNd(nn.Module):
    """Two conv/BN layers (kernel 3) plus a shortcut; a 1x1 projection when the shape changes.

    Subclasses set ``dims`` (1 or 2), the dimensionality of the convolutions.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of ``conv1`` (and of the projection).
    """

    dims: ClassVar[int]

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        conv, norm, _ = _LAYERS[self.dims]
        self.conv1 = conv(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = norm(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm(out_channels)
        # A separate module per activation (rather than one shared ReLU) keeps every call site
        # individually addressable for hooks and per-layer analyses.
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, 1, stride, bias=False),
                norm(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class SmallResNet(nn.Module):
    """Stem conv/BN/ReLU [``stem.0/1/2``], residual ``blocks``, global average ``pool``, ``fc``.

    Args:
        block: The residual block type; its ``dims`` is the network's.
        stem_kernel: Kernel size of the stem convolution (odd; padded to keep the size), which
            maps 1 input channel to the first stage's input channels.
        stages: ``(in_channels, out_channels, stride)`` of each block, in order.
        num_classes: Number of output logits.
    """

    def __init__(
        self,
        block: type[ResidualBlockNd],
        *,
        stem_kernel: int,
        stages: Sequence[tuple[int, int, int]],
        num_classes: int,
    ) -> None:
        super().__init__()
        conv, norm, pool = _LAYERS[block.dims]
        width = stages[0][0]
        self.stem = nn.Sequential(
            conv(1, width, stem_kernel, 1, stem_kernel // 2, bias=False),
            norm(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(*(block(i, o, stride=s) for i, o, s in stages))
        self.pool = pool(1)
        self.fc = nn.Linear(stages[-1][1], num_classes)

        for m in self.modules():
            if isinstance(m, conv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, norm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``N x 1 x ...`` inputs to ``N x num_classes`` logits."""
        x = self.blocks(self.stem(x))
        return self.fc(self.pool(x).flatten(1))
