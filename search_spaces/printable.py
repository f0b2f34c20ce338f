"""Names from files and URLs, made safe to print on one line.

A layer name, spec, path or URL read from a file can hold a newline or a terminal escape; printed
as it is, it would split one error into two lines or forge a line of its own ("compplan: ok:
..."). `printable(text)` shows such characters escaped, as `repr` does, and leaves other text
(non-ASCII letters included) as it is.
"""

from __future__ import annotations

import re

__all__ = ["has_control", "printable"]

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    """Whether `text` holds a control character (a newline, a tab, an escape, ...)."""
    return _CONTROL.search(text) is not None


def printable(text: str) -> str:
    """`text` with each control character escaped ("a\\nb" for "a", newline, "b")."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)
