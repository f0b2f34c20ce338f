"""MobileNetV2, written to match torchvision's definition exactly.

Contract:
    * ``state_dict()`` keys and shapes are identical to ``torchvision.models.mobilenet_v2``
      (``features.0.0`` conv, ``features.0.1`` BatchNorm, ``features.1.conv.0.0``, ...,
      ``features.18.0``, ``classifier.0`` Dropout, ``classifier.1`` Linear), so torchvision
      checkpoints load with ``load_state_dict(strict=True)``.
    * 3,504,872 parameters with ``num_classes=1000``.
    * Initialization follows torchvision: Kaiming-normal (``fan_out``) convolutions, BatchNorm
      weight 1 / bias 0, Linear weights ``N(0, 0.01)`` with zero bias.

torchvision is deliberately not a dependency; this module only needs ``torch``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ConvBNActivation", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going more than 10% below ``v``.

    Copied from torchvision (originally the TensorFlow reference) so that channel counts agree
    for every ``width_mult``.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNActivation(nn.Sequential):
    """``Sequential(Conv2d, BatchNorm2d, ReLU6)``, i.e. torchvision's ``Conv2dNormActivation``.

    Being a ``Sequential`` is what gives the ``.0`` / ``.1`` / ``.2`` key suffixes.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        kernel_size: Square kernel size; padding keeps the spatial size at stride 1.
        stride: Convolution stride.
        groups: Convolution groups (``in_planes`` for depthwise).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = out_planes


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), with a residual when shapes allow.

    Args:
        inp: Input channels.
        oup: Output channels.
        stride: Depthwise stride (1 or 2).
        expand_ratio: Hidden width as a multiple of ``inp``; 1 skips the expansion conv.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup

        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden_dim, kernel_size=1))
        layers.extend(
            [
                ConvBNActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) with torchvision's module layout.

    Args:
        num_classes: Output size of ``classifier.1``.
        width_mult: Channel multiplier.
        round_nearest: Channel counts are rounded to a multiple of this.
        dropout: Dropout probability before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        # t (expansion), c (channels), n (repeats), s (first stride), as in the paper's Table 2.
        inverted_residual_setting = [
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 3, 2],
            [6, 64, 4, 2],
            [6, 96, 3, 1],
            [6, 160, 3, 2],
            [6, 320, 1, 1],
        ]
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)

        features: list[nn.Module] = [ConvBNActivation(3, input_channel, stride=2)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
        features.append(ConvBNActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``N x 3 x H x W`` images to ``N x num_classes`` logits."""
        x = self.features(x)
        # Functional pooling (no ``avgpool`` submodule) keeps named_modules() as in torchvision.
        x = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """Build a randomly initialized MobileNetV2 (3,504,872 parameters for 1000 classes).

    Args:
        num_classes: Number of output logits.

    Returns:
        The model, in training mode.
    """
    return MobileNetV2(num_classes=num_classes)
