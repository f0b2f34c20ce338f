"""ResNet-18 and ResNet-50, written to match torchvision's definitions exactly.

Contract:
    * ``state_dict()`` keys and tensor shapes are identical to ``torchvision.models.resnet18`` /
      ``resnet50`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` / ``.1``,
      ``fc``, ...), so torchvision checkpoints load with ``load_state_dict(strict=True)``.
    * Parameter counts with ``num_classes=1000``: 11,689,512 (ResNet-18) and 25,557,032
      (ResNet-50).
    * Initialization follows torchvision's defaults: Kaiming-normal (``fan_out``, ReLU) for
      convolutions, BatchNorm weight 1 / bias 0, PyTorch's default for the final Linear.

torchvision is deliberately not a dependency; this module only needs ``torch``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut, as in ResNet-18/34.

    Args:
        inplanes: Input channels.
        planes: Output channels (``expansion`` is 1).
        stride: Stride of the first convolution.
        downsample: Optional shortcut projection (``Sequential(conv1x1, BatchNorm2d)``).
    """

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        # One shared ReLU module, like torchvision, so module names match its graph exactly.
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with stride on the 3x3 ("ResNet v1.5", as torchvision).

    Args:
        inplanes: Input channels.
        planes: Bottleneck width; the block outputs ``planes * 4`` channels.
        stride: Stride of the 3x3 convolution.
        downsample: Optional shortcut projection (``Sequential(conv1x1, BatchNorm2d)``).
    """

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ImageNet ResNet backbone with torchvision's module layout.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: Number of blocks in each of the four stages.
        num_classes: Output size of ``fc``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``N x 3 x H x W`` images to ``N x num_classes`` logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> nn.Module:
    """Build a randomly initialized ResNet-18 (11,689,512 parameters for 1000 classes).

    Args:
        num_classes: Number of output logits.

    Returns:
        The model, in training mode.
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """Build a randomly initialized ResNet-50 (25,557,032 parameters for 1000 classes).

    Args:
        num_classes: Number of output logits.

    Returns:
        The model, in training mode.
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
