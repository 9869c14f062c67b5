"""Dialogue-state-tracking annotations: rows of type (STEP, SUBSTEP, ACTION), name, start_ts, end_ts.

The pipeline our users come from keeps them as a pandas DataFrame read from a
TSV file; rows as dicts work too, so pandas is not needed here.
"""

import csv
import math
from pathlib import Path

COLUMNS = ("type", "name", "start_ts", "end_ts")


def dst_rows(annotations, what="dst_annotations"):
    """The annotations as a list of {type (upper case), name, start_ts, end_ts}; None gives []."""
    if annotations is None:
        return []
    if hasattr(annotations, "to_dict"):  # a pandas DataFrame
        annotations = annotations.to_dict("records")
    if not isinstance(annotations, (list, tuple)):
        raise TypeError(
            f"{what} expected a DataFrame or a list of rows with {', '.join(COLUMNS)}, got {type(annotations).__name__}"
        )
    rows = []
    for i, r in enumerate(annotations):
        if not isinstance(r, dict) or not set(COLUMNS) <= set(r):
            raise ValueError(f"{what}[{i}] expected a row with {', '.join(COLUMNS)}, got {r!r}")
        try:
            start, end = float(r["start_ts"]), float(r["end_ts"])
        except (TypeError, ValueError):
            start = end = math.nan
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"{what}[{i}] expected finite start_ts <= end_ts, got {r['start_ts']!r}, {r['end_ts']!r}")
        rows.append({"type": str(r["type"]).upper(), "name": str(r["name"]), "start_ts": start, "end_ts": end})
    return rows


def read_dst_tsv(path):
    """Rows of a tab-separated DST file with a header naming at least type, name, start_ts, end_ts."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dst_file: no such file {str(p)!r}")
    with open(p, newline="") as f:
        return dst_rows(list(csv.DictReader(f, delimiter="\t")), what=f"dst_file {p.name}")


def active(rows, kind, t):
    """Name of the first row of `kind` whose [start_ts, end_ts] holds t, or None."""
    return next((r["name"] for r in rows if r["type"] == kind and r["start_ts"] <= t <= r["end_ts"]), None)


def dst_state(rows, t):
    """Completed steps, the current step / substep / action and the next step at time t."""
    steps = sorted((r for r in rows if r["type"] == "STEP"), key=lambda r: r["start_ts"])
    return {
        "completed_steps": [r["name"] for r in steps if r["end_ts"] < t],
        "current_step": active(rows, "STEP", t) or "Unknown",
        "current_substep": active(rows, "SUBSTEP", t) or "Unknown",
        "current_action": active(rows, "ACTION", t) or "Unknown",
        "next_step": next((r["name"] for r in steps if r["start_ts"] > t), None),
        "timestamp": t,
    }
