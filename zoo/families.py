"""Small models of public architecture families, for trying compplan on designs nobody here wrote.

Each is the family's structure at a size that runs in milliseconds on a CPU (well under 1M
parameters), randomly initialized with a fixed seed, in plain torch (no torchvision, no
transformers):

- `shufflenet_v2_tiny`: ShuffleNetV2 units (channel split, channel shuffle, concatenation).
- `efficientnet_tiny`: MBConv blocks with squeeze-excitation, SiLU and stochastic depth.
- `regnet_tiny`: RegNetY blocks (grouped 3x3 convolutions of group width 8, SE, residual).
- `convnext_tiny`: ConvNeXt blocks (depthwise 7x7, channels-last LayerNorm, Linear MLP, layer
  scale, stochastic depth), a patchify stem and downsampling layers.
- `densenet_tiny`: dense blocks (BN-ReLU-Conv, every layer reads all earlier features),
  transition layers.
- `vit_tiny`: a Vision Transformer (patch embedding, class token, position embedding,
  `nn.MultiheadAttention` encoder blocks, head on the class token).
- `bert_tiny`: a BERT encoder laid out as Hugging Face's (separate query, key, value and output
  Linears), on token ids, returning mean-pooled embeddings.

Contract:
    * `ENTRIES` lists their zoo entries; each `build()` returns a new model in eval mode whose
      weights are the same on every call (seeded without touching the caller's random state).
    * Image models take `(1, 3, 64, 64)` float inputs and return 10 logits; `bert_tiny` takes
      `(1, 32)` int64 token ids below `BERT_VOCAB` (its entry's `example_input` makes them) and
      returns a `(1, 128)` embedding.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo._entry import ZooEntry

__all__ = [
    "BERT_VOCAB",
    "ENTRIES",
    "BertTiny",
    "ConvNeXtTiny",
    "DenseNetTiny",
    "DropPath",
    "EfficientNetTiny",
    "RegNetTiny",
    "ShuffleNetV2Tiny",
    "ViTTiny",
    "channel_shuffle",
    "token_ids",
]

IMAGE_INPUT_SHAPE: tuple[int, ...] = (1, 3, 64, 64)
TOKEN_INPUT_SHAPE: tuple[int, ...] = (1, 32)
BERT_VOCAB = 2000
_NUM_CLASSES = 10
_SEED = 0


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random `p` of the examples
    (scaling the rest by 1 / (1 - p)); in eval, the identity."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _conv_bn(
    cin: int, cout: int, k: int, *, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU
) -> nn.Sequential:
    """Conv (no bias, "same" padding) → BatchNorm → activation (none if `act` is None)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- ShuffleNetV2 -------------------------------------------------------------------------------


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of `groups` groups (ShuffleNet's shuffle)."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: at stride 1, half the channels pass through and the other half go
    through the branch; at stride 2, both branches see all channels and halve the resolution.
    The halves are concatenated and shuffled."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _conv_bn(cin, cin, 3, stride=stride, groups=cin, act=None),
                _conv_bn(cin, half, 1),
            )
        else:
            self.branch1 = nn.Sequential()
        branch_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            _conv_bn(branch_in, half, 1),
            _conv_bn(half, half, 3, stride=stride, groups=half, act=None),
            _conv_bn(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Tiny(nn.Module):
    """ShuffleNetV2 (torchvision's layout), stages of 48, 96 and 192 channels."""

    def __init__(self, num_classes: int = _NUM_CLASSES) -> None:
        super().__init__()
        stages, repeats, cin = (48, 96, 192), (2, 3, 2), 24
        self.conv1 = _conv_bn(3, cin, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        for cout, n in zip(stages, repeats, strict=True):
            blocks += [ShuffleUnit(cin, cout, 2)] + [
                ShuffleUnit(cout, cout, 1) for _ in range(n - 1)
            ]
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.conv5 = _conv_bn(cin, 256, 1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# --- EfficientNet -------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """Global average pool → 1x1 conv down → activation → 1x1 conv up → sigmoid, the gate
    multiplying the feature map channel by channel."""

    def __init__(self, channels: int, squeezed: int, act: type = nn.SiLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class MBConv(nn.Module):
    """EfficientNet's inverted residual: expand 1x1 → depthwise → SE → project 1x1, with a
    residual (through stochastic depth) where shapes allow."""

    def __init__(
        self, cin: int, cout: int, *, expand: int, kernel: int, stride: int, drop: float
    ) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, act=nn.SiLU))
        layers += [
            _conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden, act=nn.SiLU),
            SqueezeExcitation(hidden, max(1, cin // 4)),
            _conv_bn(hidden, cout, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop_path = DropPath(drop) if self.residual else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + self.drop_path(out) if self.residual else out


class EfficientNetTiny(nn.Module):
    """EfficientNet-B0's design (MBConv1/MBConv4 stages, kernels 3 and 5) at 16 to 64 channels;
    the stochastic-depth rate grows linearly to 0.2 over the blocks, as in the paper."""

    def __init__(self, num_classes: int = _NUM_CLASSES) -> None:
        super().__init__()
        # (expand, kernel, stride, out channels, blocks)
        config = ((1, 3, 1, 16, 1), (4, 3, 2, 24, 2), (4, 5, 2, 40, 2), (4, 3, 2, 64, 2))
        total = sum(c[-1] for c in config)
        self.stem = _conv_bn(3, 16, 3, stride=2, act=nn.SiLU)
        blocks, cin, index = [], 16, 0
        for expand, kernel, stride, cout, n in config:
            for i in range(n):
                drop = 0.2 * index / total
                blocks.append(
                    MBConv(
                        cin,
                        cout,
                        expand=expand,
                        kernel=kernel,
                        stride=stride if i == 0 else 1,
                        drop=drop,
                    )
                )
                cin, index = cout, index + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, 256, 1, act=nn.SiLU)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))


# --- RegNet -------------------------------------------------------------------------------------


class RegNetYBlock(nn.Module):
    """RegNetY's residual bottleneck (ratio 1): 1x1 → grouped 3x3 (`group_width` channels per
    group) → SE (squeezed to a quarter of the block's input) → 1x1, plus a projected shortcut
    where the shape changes."""

    def __init__(self, cin: int, cout: int, *, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = _conv_bn(cin, cout, 1)
        self.b = _conv_bn(cout, cout, 3, stride=stride, groups=cout // group_width)
        self.se = SqueezeExcitation(cout, max(1, cin // 4), act=nn.ReLU)
        self.c = _conv_bn(cout, cout, 1, act=None)
        self.proj = (
            _conv_bn(cin, cout, 1, stride=stride, act=None)
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.proj(x) + self.c(self.se(self.b(self.a(x)))))


class RegNetTiny(nn.Module):
    """RegNetY with four stages of 24, 48, 96 and 192 channels (depths 1, 1, 2, 2), group
    width 8."""

    def __init__(self, num_classes: int = _NUM_CLASSES) -> None:
        super().__init__()
        widths, depths = (24, 48, 96, 192), (1, 1, 2, 2)
        self.stem = _conv_bn(3, 16, 3, stride=2)
        blocks, cin = [], 16
        for width, depth in zip(widths, depths, strict=True):
            for i in range(depth):
                blocks.append(RegNetYBlock(cin, width, stride=2 if i == 0 else 1, group_width=8))
                cin = width
        self.trunk = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.trunk(self.stem(x)).mean(dim=(2, 3)))


# --- ConvNeXt -----------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (channels last for the norm, as torchvision)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 → (channels last) LayerNorm → Linear 4x → GELU → Linear → layer scale,
    added to the input through stochastic depth."""

    def __init__(self, dim: int, *, drop: float, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtTiny(nn.Module):
    """ConvNeXt with stages of 16, 32, 64 and 128 channels (depths 1, 1, 3, 1): a 4x4 stride-4
    patchify stem, LayerNorm + 2x2 stride-2 conv between stages, pooled LayerNorm head.

    The layer scale starts at 0.1, not the paper's 1e-6: a trained ConvNeXt's scales have grown
    far above their start, and at 1e-6 a random model's blocks would not reach its output, so
    no compression of them could be told from another.
    """

    def __init__(self, num_classes: int = _NUM_CLASSES, layer_scale: float = 0.1) -> None:
        super().__init__()
        dims, depths = (16, 32, 64, 128), (1, 1, 3, 1)
        total, index = sum(depths), 0
        self.downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))]
        )
        for cin, cout in itertools.pairwise(dims):
            self.downsample.append(
                nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, stride=2))
            )
        self.stages = nn.ModuleList()
        for dim, depth in zip(dims, depths, strict=True):
            blocks = []
            for _ in range(depth):
                drop = 0.1 * index / (total - 1)
                blocks.append(ConvNeXtBlock(dim, drop=drop, layer_scale=layer_scale))
                index += 1
            self.stages.append(nn.Sequential(*blocks))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample, self.stages, strict=True):
            x = stage(down(x))
        return self.head(self.norm(x.mean(dim=(2, 3))))


# --- DenseNet -----------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """BN → ReLU → 1x1 conv (to 4 x growth) → BN → ReLU → 3x3 conv (to growth), over the
    concatenation of every earlier feature map of the block."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.conv1(F.relu(self.norm1(torch.cat(features, dim=1))))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """Layers each fed all earlier outputs (and the block's input); returns them all, joined."""

    def __init__(self, layers: int, cin: int, growth: int) -> None:
        super().__init__(
            {f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth) for i in range(layers)}
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN → ReLU → 1x1 conv (halving the channels) → 2x2 average pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2)
        )


class DenseNetTiny(nn.Module):
    """DenseNet-BC (torchvision's layout): growth 12, three dense blocks of 4 layers,
    compression 0.5 in the transitions."""

    def __init__(self, num_classes: int = _NUM_CLASSES, growth: int = 12) -> None:
        super().__init__()
        channels = 2 * growth
        parts: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)),
            ("norm0", nn.BatchNorm2d(channels)),
            ("relu0", nn.ReLU()),
            ("pool0", nn.MaxPool2d(3, 2, 1)),
        ]
        blocks = 3
        for i in range(blocks):
            parts.append((f"denseblock{i + 1}", DenseBlock(4, channels, growth)))
            channels += 4 * growth
            if i < blocks - 1:
                parts.append((f"transition{i + 1}", Transition(channels, channels // 2)))
                channels //= 2
        parts += [("norm5", nn.BatchNorm2d(channels)), ("relu5", nn.ReLU())]
        self.features = nn.Sequential(OrderedDict(parts))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


# --- Vision Transformer -------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """Pre-norm transformer block (torchvision's ViT): x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViTTiny(nn.Module):
    """ViT on 64x64 images in 8x8 patches (64 tokens and the class token), width 64, 4 blocks
    of 4 heads, MLP width 256; the head reads the class token."""

    def __init__(
        self,
        num_classes: int = _NUM_CLASSES,
        *,
        image: int = 64,
        patch: int = 8,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
    ) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderBlock(dim, heads, 4 * dim) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (batch, tokens, dim)
        x = torch.cat((self.class_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.ln(self.layers(x + self.pos_embedding))
        return self.head(x[:, 0])


# --- BERT ---------------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm (every token is of type 0)."""

    def __init__(self, vocab: int, hidden: int, max_positions: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(max_positions), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        positions = self.position_ids[: ids.shape[1]].unsqueeze(0)
        types = torch.zeros_like(ids)
        x = self.word_embeddings(ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings(types))


class BertSelfAttention(nn.Module):
    """Scaled dot-product attention with separate query, key and value projections."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        b, t, h = x.shape

        def split(y: Tensor) -> Tensor:  # (b, t, h) → (b, heads, t, h / heads)
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h // self.heads), dim=-1)
        return (weights @ v).transpose(1, 2).reshape(b, t, h)


class BertLayer(nn.Module):
    """Post-norm encoder layer: LN(x + dense(attention(x))), then LN(x + dense(GELU(dense(x))))
    (Hugging Face's attention.self / attention.output / intermediate / output modules)."""

    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.attention = nn.ModuleDict(
            {
                "self": BertSelfAttention(hidden, heads),
                "output": nn.ModuleDict(
                    {"dense": nn.Linear(hidden, hidden), "LayerNorm": nn.LayerNorm(hidden, 1e-12)}
                ),
            }
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(hidden, intermediate)})
        self.output = nn.ModuleDict(
            {"dense": nn.Linear(intermediate, hidden), "LayerNorm": nn.LayerNorm(hidden, 1e-12)}
        )

    def forward(self, x: Tensor) -> Tensor:
        attention_out = self.attention["output"]
        x = attention_out["LayerNorm"](x + attention_out["dense"](self.attention["self"](x)))
        y = self.output["dense"](F.gelu(self.intermediate["dense"](x)))
        return self.output["LayerNorm"](x + y)


class BertTiny(nn.Module):
    """BERT encoder: vocabulary `BERT_VOCAB`, hidden 128, 2 layers of 2 heads, intermediate
    512, 64 positions; returns the mean of the last layer's token embeddings (no padding mask:
    every id is a token)."""

    def __init__(
        self, vocab: int = BERT_VOCAB, hidden: int = 128, layers: int = 2, heads: int = 2
    ) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, hidden, max_positions=64)
        self.encoder = nn.ModuleDict(
            {"layer": nn.ModuleList([BertLayer(hidden, heads, 4 * hidden) for _ in range(layers)])}
        )
        for module in self.modules():  # BERT's initializer: N(0, 0.02), zero biases
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embeddings(ids)
        for layer in self.encoder["layer"]:
            x = layer(x)
        return x.mean(dim=1)


def token_ids(shape: tuple[int, ...]) -> Tensor:
    """Seeded int64 token ids of `shape` in 1..BERT_VOCAB-1 (0 is the padding id)."""
    generator = torch.Generator().manual_seed(_SEED)
    return torch.randint(1, BERT_VOCAB, shape, generator=generator, dtype=torch.int64)


# --- entries ------------------------------------------------------------------------------------


def _seeded(cls: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A zero-argument build of `cls` in eval mode, initialized from `_SEED` (the caller's random
    state is left as it was)."""

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            return cls().eval()

    build.__name__ = build.__qualname__ = f"build_{cls.__name__}"
    return build


# (name, class, family, parameters): the counts are pinned by tests/zoo/test_families.py.
_FAMILIES: tuple[tuple[str, Callable[[], nn.Module], str, int], ...] = (
    ("shufflenet_v2_tiny", ShuffleNetV2Tiny, "ShuffleNetV2 (channel split and shuffle)", 125_962),
    (
        "efficientnet_tiny",
        EfficientNetTiny,
        "EfficientNet (MBConv, SE, SiLU, stochastic depth)",
        129_778,
    ),
    ("regnet_tiny", RegNetTiny, "RegNetY (grouped 3x3 of group width 8, SE)", 280_024),
    ("convnext_tiny", ConvNeXtTiny, "ConvNeXt (depthwise 7x7, LayerNorm, layer scale)", 306_778),
    ("densenet_tiny", DenseNetTiny, "DenseNet-BC (dense blocks, transitions)", 102_778),
    ("vit_tiny", ViTTiny, "Vision Transformer (nn.MultiheadAttention, class token)", 217_290),
)
BERT_PARAMS = 661_248

ENTRIES: tuple[ZooEntry, ...] = (
    *(
        ZooEntry(
            name=name,
            build=_seeded(cls),
            input_shape=IMAGE_INPUT_SHAPE,
            description=f"{family}, 64x64 inputs, random init ({params / 1000:.0f}k params)",
            task=None,
        )
        for name, cls, family, params in _FAMILIES
    ),
    ZooEntry(
        name="bert_tiny",
        build=_seeded(BertTiny),
        input_shape=TOKEN_INPUT_SHAPE,
        description=f"BERT encoder (Hugging Face layout), 32 token ids, mean-pooled, random init "
        f"({BERT_PARAMS / 1000:.0f}k params)",
        task=None,
        example_input=token_ids,
    ),
)
