"""Model specs: how a user names a model on the command line.

- `zoo:NAME`: a reference model from `zoo` (it knows its own input shape);
- `package.module:callable` or `path/to/file.py:callable`: anything that, called with no
  arguments, returns an `nn.Module`; it needs an input shape, or example inputs (an inputs file:
  any dtype, token ids included).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search_spaces.printable import printable

__all__ = [
    "MAX_INPUT_ELEMENTS",
    "LoadedModel",
    "ModelSpecError",
    "import_callable",
    "load_model",
    "parse_shape",
    "user_code",
]


MAX_INPUT_ELEMENTS = 2**28  # 1 GiB of float32: far past any model's example input
# Seeds the random example input of a model whose spec makes none (a file.py:callable, say).
_EXAMPLE_SEED = 0


class ModelSpecError(ValueError):
    """A model spec or input shape that does not name a usable model; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for discovery.

    Attributes:
        spec: the spec it was loaded from (recorded in plans).
        module: the model, in eval mode.
        example_inputs: one example input batch (batch size 1 unless the shape says otherwise).
        task: the zoo task it is trained for ("digits"), or None.
    """

    spec: str
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    task: str | None = None


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """ "1,3,224,224" (or "1x3x224x224") → (1, 3, 224, 224)."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    shape: tuple[int, ...] = ()
    if re.fullmatch(r"\s*\d+(\s*[,x×]\s*\d+)*\s*", text):
        shape = tuple(int(p) for p in re.split(r"[,x×]", text))
    if not shape or any(v <= 0 for v in shape):
        raise ModelSpecError(
            f"input shape '{text}' is not a list of positive integers; write it like 1,3,224,224"
        )
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise ModelSpecError(
            f"input shape '{text}' has {elements:,} elements, more than the {MAX_INPUT_ELEMENTS:,} "
            "an example input may have; give a smaller shape (batch 1 is enough)"
        )
    return shape


def load_model(
    spec: str,
    *,
    input_shape: str | Sequence[int] | None = None,
    pretrained: bool = True,
    inputs: str | Path | torch.Tensor | None = None,
    inputs_flag: str = "--inputs",
) -> LoadedModel:
    """Build the model a spec names, with example inputs.

    Args:
        spec: "zoo:NAME", "package.module:callable" or "path/to/file.py:callable".
        input_shape: the example input's shape, batch first; zoo models have a default.
        pretrained: False builds only the structure of a zoo model (no training, no cache),
            enough to load a compressed file into.
        inputs: inputs of the user's, or a data file holding them as `x`
            (`search_spaces.data_file`): their first example becomes the example input, of
            their dtype (token ids, say); `input_shape`, if also given, must agree beyond the
            batch.
        inputs_flag: how messages name the file's option ("--data", "--inputs").

    Raises:
        ModelSpecError: the spec names nothing loadable, does not return an nn.Module, or no input
            shape is known.
        DataFileError: `inputs` names a file that cannot be read.
    """
    if inputs is not None and not isinstance(inputs, torch.Tensor):
        from search_spaces.data_file import read_arrays

        inputs = read_arrays(inputs, flag=inputs_flag)["x"]
    if spec.startswith("zoo:"):
        import zoo

        try:
            entry = zoo.get(spec[4:])
        except (KeyError, ValueError) as error:
            raise ModelSpecError(str(error).strip("'\"")) from None
        module = entry.build() if pretrained else entry.build_architecture()
        default_shape, task, make_input = entry.input_shape, entry.task, entry.example_input
    else:
        factory = import_callable(spec)
        with user_code(f"calling '{spec}'"):
            module = factory()
        default_shape, task, make_input = None, None, None
        if not isinstance(module, nn.Module):
            raise ModelSpecError(f"'{spec}' returned a {type(module).__name__}, not an nn.Module")
    shape = parse_shape(input_shape) if input_shape is not None else default_shape
    module.eval()
    if inputs is not None:
        if input_shape is not None and tuple(shape[1:]) != tuple(inputs.shape[1:]):
            raise ModelSpecError(
                f"--input-shape {','.join(map(str, shape))} disagrees with the inputs' shape "
                f"{tuple(inputs.shape)}; leave --input-shape out"
            )
        # The batch is --input-shape's where both are given (latency at the user's batch).
        batch = shape[0] if input_shape is not None else 1
        return LoadedModel(spec=spec, module=module, example_inputs=(inputs[:batch],), task=task)
    if shape is None:
        raise ModelSpecError(
            f"'{spec}' needs --input-shape (for example --input-shape 1,3,224,224), or "
            "--inputs FILE with example inputs (token ids, say)"
        )
    # A zoo model of token ids makes ids inside its vocabulary; other models take random floats,
    # seeded: the search's layer sensitivities, and so its plan, are then the same every run.
    if make_input is not None:
        example = make_input(shape)
    else:
        example = torch.randn(*shape, generator=torch.Generator().manual_seed(_EXAMPLE_SEED))
    return LoadedModel(spec=spec, module=module, example_inputs=(example,), task=task)


def import_callable(spec: str, *, what: str = "model"):
    """The callable a `package.module:callable` or `file.py:callable` spec names (imported,
    not called): this runs the module's code, so only for specs the user gave or trusts.

    Raises:
        ModelSpecError: the spec is malformed or names nothing callable; `what` ("model",
            "task") says in messages what the spec was for.
    """
    if ":" not in spec:
        raise ModelSpecError(
            f"{what} spec '{spec}' is not zoo:NAME, package.module:callable or file.py:callable"
        )
    where, attr = spec.rsplit(":", 1)
    if not attr:
        raise ModelSpecError(f"{what} spec '{spec}' names no callable after ':'")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ModelSpecError(f"{what} file '{where}' does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        with user_code(f"importing '{where}'"):
            module_spec.loader.exec_module(module)
    else:
        # A console script does not put the working directory on sys.path; users expect it there.
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        if not where:
            raise ModelSpecError(
                f"{what} spec '{spec}' has no module before ':'; write package.module:callable"
            )
        try:
            with user_code(f"importing '{where}'"):
                module = importlib.import_module(where)
        except ModelSpecError as error:
            if not isinstance(error.__cause__, ModuleNotFoundError):
                raise
            raise ModelSpecError(
                f"cannot import '{where}' ({error.__cause__}); is it on PYTHONPATH?"
            ) from None
    target = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ModelSpecError(f"'{where}' has no attribute '{attr}'")
    if not callable(target):
        raise ModelSpecError(f"'{spec}' is not callable")
    return target


@contextlib.contextmanager
def user_code(doing: str) -> Iterator[None]:
    """Run user code (importing or calling a spec) so that nothing it raises ends compplan
    as success or as a crash: an exception, `SystemExit` (even `SystemExit(0)`) and a
    `KeyboardInterrupt` raised by the code itself all become a `ModelSpecError` naming `doing`
    ("importing 'mynet.py'"), with the original as its `__cause__`."""
    try:
        yield
    except ModelSpecError:
        raise
    except SystemExit as error:
        raise ModelSpecError(
            f"{doing} failed: it called exit({error.code!r}); a model or task file must not exit"
        ) from error
    except (Exception, KeyboardInterrupt) as error:
        reason = printable(str(error).strip().splitlines()[0]) if str(error).strip() else ""
        raise ModelSpecError(
            f"{doing} failed: {type(error).__name__}{': ' + reason if reason else ''}"
        ) from error
