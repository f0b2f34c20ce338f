"""Fixtures of the zoo's trained-model tests (digits, MNIST-1D)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, not yet created folder that ``$COMPPLAN_CACHE_DIR`` names."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("COMPPLAN_CACHE_DIR", str(directory))
    return directory
