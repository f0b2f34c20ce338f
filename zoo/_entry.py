"""`ZooEntry`: one named model of the zoo (its own module: zoo modules declare theirs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["ZooEntry"]


@dataclass(frozen=True)
class ZooEntry:
    """A named model in the zoo.

    Attributes:
        name: Registry name, e.g. ``"resnet18"``.
        build: Zero-argument factory returning a fresh model in eval mode (``digits`` and
            ``mnist1d``: trained).
        input_shape: Default example input shape, batch size 1.
        description: One-line human-readable description.
        task: Name of the evaluation task the model is trained for (``"digits"``,
            ``"mnist1d"``), or ``None`` when it has no task (randomly initialized architectures).
        architecture: Zero-argument factory for the untrained structure, where ``build`` does
            more than construct (``digits`` and ``mnist1d`` train); ``None`` means ``build`` is
            cheap.
        example_input: Makes the example input of a shape (the entry's `input_shape`, or the
            user's `--input-shape`), for a model whose inputs are not floats: token ids within its
            vocabulary, say; ``None``: standard normal floats.
    """

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str
    task: str | None
    architecture: Callable[[], nn.Module] | None = None
    example_input: Callable[[tuple[int, ...]], Tensor] | None = None

    def build_architecture(self) -> nn.Module:
        """The model's structure without its trained weights (cheap: never trains).

        Loading a compressed file needs only the structure; its weights come from the file.
        """
        return (self.architecture or self.build)().eval()
