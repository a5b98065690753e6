"""Printing rows as an aligned table, CSV, JSON or JSON lines."""

import csv
import json
import sys
from collections.abc import Sequence
from typing import Any

MAX_CELL = 72


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> None:
    out = sys.stdout
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in row] for row in rows])
    elif fmt == "json":
        out.write(json.dumps([dict(zip(columns, row)) for row in rows], indent=2, default=str) + "\n")
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(dict(zip(columns, row)), default=str) + "\n")
    else:
        out.write(format_table(columns, rows))


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_short(_plain(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _short(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def report(result: Any, noun: str, extra: str | None = None) -> None:
    """One line on stderr saying what a stage did (then `extra`, after a semicolon); the table's path alone on
    stdout, for the next stage. A count that is a table of its own (a dict) stays in the manifest."""
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items() if not isinstance(v, dict))
    tail = f"; {extra}" if extra else ""
    if result.up_to_date:
        print(f"{noun} up to date ({counts}){tail}", file=sys.stderr)
    else:
        print(f"{result.items_done} {noun} done now; table holds {counts}{tail}", file=sys.stderr)
    print(result.path)
