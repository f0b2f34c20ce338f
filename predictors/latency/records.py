"""Latency records on disk: a pandas DataFrame as parquet or CSV, checked when read back.

A record is one measurement: of a whole plan ("model": its spec, input shape and plan JSON) or
of one layer configuration ("layer": the `LayerConfigs` columns). Every record carries the device
fingerprint it was measured on, so a predictor knows what it was fit for. `ProfileSummary`
says in a few figures what a set of records holds.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from predictors.latency.features import BASE_COLUMNS, LayerConfigs
from predictors.runtimes import RUNTIMES
from search_spaces.input_file import InputFileError, check_input_file
from search_spaces.output_file import write_atomically, write_text_atomically

__all__ = [
    "DEPLOYED_FORM",
    "FINGERPRINT_COLUMNS",
    "RUNTIMES",
    "ProfileSummary",
    "RecordsError",
    "check_records_path",
    "load_records",
    "save_records",
]

FINGERPRINT_COLUMNS = ("device", "cpu", "threads", "torch", "gpu")
_REQUIRED = ("record", "model", "input_shape", "plan", "latency_ms", *FINGERPRINT_COLUMNS)
_LAYER_COLUMNS = tuple(LayerConfigs.__dataclass_fields__)
_REQUIRED_LAYER_COLUMNS = BASE_COLUMNS  # neighbour columns came later: a layer alone's values
# What ran the deployed form is the `runtime` column (`predictors.runtimes`); records without it
# were timed on torch.
_FORMATS = {".parquet": "parquet", ".csv": "csv"}
# What `engine.deploy` builds and `profile` times, in the `deployed_form` column of every record:
# 1 (no column; compplan before it) ran each BatchNorm as its own scale-shift step, 2 merges a
# BatchNorm into the convolution it follows. A model with BatchNorms runs faster in form 2, so
# records of the two forms do not mix.
DEPLOYED_FORM = 2


class RecordsError(ValueError):
    """A records file that cannot be written or read as latency records; the message says why."""


def check_records_path(path: str | Path) -> str:
    """The format a records path asks for ("parquet" or "csv"), by its suffix.

    Raises:
        RecordsError: any other suffix.
    """
    path = Path(path)
    try:
        kind = _FORMATS[path.suffix.lower()]
    except KeyError:
        raise RecordsError(
            f"{path}: latency records are saved as .parquet or .csv (got '{path.suffix}')"
        ) from None
    return kind


def save_records(records: pd.DataFrame, path: str | Path) -> Path:
    """Write records to `path` (.parquet or .csv); returns the path."""
    path = Path(path)
    kind = check_records_path(path)
    if kind == "parquet":
        buffer = io.BytesIO()
        records.to_parquet(buffer, index=False)
        write_atomically(path, buffer.getvalue(), "the records file")
    else:
        write_text_atomically(path, records.to_csv(index=False), "the records file")
    return path


def load_records(*paths: str | Path) -> pd.DataFrame:
    """Read and concatenate records files, checking that they are latency records.

    Raises:
        RecordsError: a file is missing, unreadable, or lacks the columns records have.
    """
    if not paths:
        raise RecordsError("no records file given")
    frames = []
    for path in map(Path, paths):
        kind = check_records_path(path)
        if not path.exists():
            raise RecordsError(f"{path}: no such records file (make one with `compplan profile`)")
        try:
            check_input_file(path, "records file")
        except InputFileError as error:
            raise RecordsError(str(error)) from None
        try:
            frame = (
                pd.read_parquet(path)
                if kind == "parquet"
                else pd.read_csv(path, dtype={"plan": str, "gpu": str, "input_shape": str})
            )
            for column in ("plan", "gpu", "input_shape"):
                if column in frame.columns:
                    frame[column] = frame[column].fillna("")
        except Exception as error:
            raise RecordsError(f"{path}: cannot read it as {kind}: {error}") from None
        missing = [c for c in _REQUIRED if c not in frame.columns]
        if "layer" in set(frame.get("record", ())):
            missing += [c for c in _REQUIRED_LAYER_COLUMNS if c not in frame.columns]
        if missing:
            raise RecordsError(
                f"{path}: not latency records (missing columns {', '.join(missing)}); "
                "make them with `compplan profile`"
            )
        unknown = set(frame["record"]) - {"model", "layer"}
        if unknown:
            raise RecordsError(f"{path}: unknown record kinds {sorted(unknown)}")
        if "deployed_form" not in frame.columns:
            frame["deployed_form"] = 1
        if "runtime" not in frame.columns:
            frame["runtime"] = "torch"
        unknown = set(frame["runtime"].astype(str)) - set(RUNTIMES)
        if unknown:
            raise RecordsError(f"{path}: unknown runtimes {sorted(unknown)}")
        _check_numbers(frame, path)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


_NUMBERS = (
    "latency_ms",
    "threads",
    "ratio",
    "reference_ms",
    "units",
    "deployed_form",
    *_LAYER_COLUMNS,
)


def _check_numbers(frame: pd.DataFrame, path: Path) -> None:
    """Refuse a records file whose numeric columns hold anything else (text, gaps)."""
    layers = frame["record"] == "layer"
    for column in _NUMBERS:
        if column not in frame:
            continue
        rows = frame[layers] if column in _LAYER_COLUMNS else frame
        values = pd.to_numeric(rows[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.fillna(0))
        if column in ("latency_ms", "ratio", "reference_ms", "units"):
            bad |= values <= 0
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise RecordsError(
                f"{path}: column '{column}' holds {rows[column].iloc[row]!r} (row "
                f"{rows.index[row] + 2}), not a positive number; make records with "
                "`compplan profile`"
            )
        frame.loc[rows.index, column] = values


@dataclass(frozen=True)
class ProfileSummary:
    """What a set of records holds, in the figures `compplan profile` prints.

    Attributes:
        plans: model records (plans measured whole).
        layers: layer records (single layers, the synthetic ones included).
        seconds: time spent measuring (`profile` keeps it in `records.attrs`), or None.
        latency_ms: {"min", "median", "max"} of the plans' latencies (ms).
        spread_median: the median over plans of the spread within a measurement (of the per-block
            ratios; of the calls, for records of an older compplan).
        device: the fingerprint the records were measured on (of the first record).
        ratio: {"min", "median", "max"} of the plans' ratios to the uncompressed model, and
        reference_ms: its time over the run; None for records without ratios (older ones).
        link: the uncompressed model's time in calibration-module units (the median over the
            records' models); None for records without units (older ones).
    """

    plans: int
    layers: int
    seconds: float | None
    latency_ms: dict[str, float]
    spread_median: float
    device: dict
    ratio: dict[str, float] | None = None
    reference_ms: float | None = None
    link: float | None = None

    @classmethod
    def of(cls, records: pd.DataFrame) -> ProfileSummary:
        """The summary of `records` (at least one model record)."""
        models = records[records["record"] == "model"]
        first = records.iloc[0]
        device = {k: first[k] for k in FINGERPRINT_COLUMNS}
        device["threads"] = int(device["threads"])
        device["runtime"] = str(first.get("runtime", "torch"))
        seconds = records.attrs.get("profile_seconds")
        relative = "ratio" in models and models["ratio"].notna().all()
        return cls(
            plans=len(models),
            layers=int((records["record"] == "layer").sum()),
            seconds=None if seconds is None else float(seconds),
            latency_ms=_range(models["latency_ms"]),
            spread_median=float(models["spread"].median()),
            device=device,
            ratio=_range(models["ratio"]) if relative else None,
            reference_ms=float(models["reference_ms"].median()) if relative else None,
            link=float(models["reference_units"].median()) if "reference_units" in models else None,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _range(values: pd.Series) -> dict[str, float]:
    return {
        "min": float(values.min()),
        "median": float(values.median()),
        "max": float(values.max()),
    }
