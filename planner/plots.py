"""The search's picture: every trial's proxy against its size, the feasible ones and the Pareto
front marked, the size budget drawn. HTML (interactive, plotly) or PNG (matplotlib), by suffix."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from search_spaces.output_file import write_atomically, write_text_atomically
from search_spaces.plan import PlanError

__all__ = ["save_pareto_plot"]

SUFFIXES = (".html", ".png")


def save_pareto_plot(
    trials: pd.DataFrame, pareto: pd.DataFrame, path: str | Path, *, size_budget: float | None
) -> Path:
    """Write the plot of a `SearchResult`'s `trials` and `pareto` to `path` (.html or .png).

    Raises:
        PlanError: another suffix.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise PlanError(f"plot {path}: give a .html (interactive) or .png file")
    done = trials[trials["state"] == "COMPLETE"]
    feasible = done["feasible"].fillna(False).astype(bool)
    kib = 1024
    groups = [
        ("infeasible", done[~feasible], "#bbbbbb"),
        ("feasible", done[feasible], "#1f77b4"),
        ("Pareto front", pareto.sort_values("size_bytes"), "#d62728"),
    ]
    title = "proxy (output distortion, lower is better) against size"
    if path.suffix.lower() == ".html":
        import plotly.graph_objects as go

        figure = go.Figure()
        for name, frame, color in groups:
            figure.add_trace(
                go.Scatter(
                    x=frame["size_bytes"] / kib,
                    y=frame["value"],
                    mode="lines+markers" if name == "Pareto front" else "markers",
                    name=name,
                    marker={"color": color},
                    text=[f"trial {n}" for n in frame["number"]],
                )
            )
        if size_budget is not None:
            figure.add_vline(x=size_budget / kib, line_dash="dash", annotation_text="size budget")
        figure.update_layout(title=title, xaxis_title="size (KiB)", yaxis_title="proxy")
        figure.update_yaxes(type="log")
        write_text_atomically(path, figure.to_html(include_plotlyjs=True), "--plot")
        return path
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, frame, color in groups:
        style = "-o" if name == "Pareto front" else "o"
        axes.plot(frame["size_bytes"] / kib, frame["value"], style, color=color, label=name, ms=3)
    if size_budget is not None:
        axes.axvline(size_budget / kib, linestyle="--", color="black", label="size budget")
    axes.set(xlabel="size (KiB)", ylabel="proxy", title=title, yscale="log")
    axes.legend()
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    plt.close(figure)
    write_atomically(path, image.getvalue(), "--plot")
    return path
