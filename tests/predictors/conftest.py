"""Fixtures of the predictor tests: the digits model's graph, discovered once per session."""

from __future__ import annotations

import pytest

from search_spaces import discover
from search_spaces.model_spec import load_model


@pytest.fixture(scope="session")
def digits_graph():
    """The graph of zoo:digits at its own input shape (1×1×8×8), untrained."""
    loaded = load_model("zoo:digits", pretrained=False)
    return discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
