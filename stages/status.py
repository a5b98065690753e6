"""`savi status`: what each run of a workspace holds, table by table, and whether anything is unfinished."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.errors import SaviError
from stages.core.records import TABLES
from stages.core.store import existing_run, list_runs, read_table, redo_hint, round_of


def describe_runs(workspace: str | Path | None = None, run: str | None = None) -> list[dict[str, Any]]:
    """What each run holds: per table its state (done, damaged, running, interrupted), rows and counts; the top
    errors of its samples; and for each damaged table the whole reason, which the table's detail only shortens.

    A finished table is read whole to call it done, as a query or the next stage would read it: a file cut short
    or overwritten since is `damaged`, and its detail says how to make it again."""
    runs = [existing_run(run, workspace)] if run else list_runs(workspace)
    described = []
    for r in runs:
        busy = r.is_locked()
        tables, damaged = [], []  # damaged: why each unreadable table cannot be read
        arts = [a for name in TABLES for a in r.artifacts(name)]
        for art in sorted(arts, key=lambda a: (round_of(a.path) or 0, a.spec.name == "evals")):
            round, name = round_of(art.path), art.name if art.spec.name != "evals" else f"eval/{art.name}"
            if art.complete and not art.in_progress:
                manifest = art.manifest() or {}
                try:
                    read_table(art.path, art.spec)
                except SaviError as e:
                    damaged.append(str(e))
                    tables.append({"round": round, "table": name, "state": "damaged", "rows": None,
                                   "detail": redo_hint(art.path, art.spec)})
                    continue
                counts = ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items()
                                   if not isinstance(v, dict))  # a table of counts stays in the manifest
                tables.append({"round": round, "table": name, "state": "done", "rows": manifest.get("rows"),
                               "detail": counts})
            elif art.in_progress or art.path.is_file():
                parts = sorted(art.parts_dir.glob("part-*.parquet.part"))
                rows = _rows([*parts, art.path] if art.path.is_file() else parts)
                state, detail = ("running", "") if busy else ("interrupted", "rerun the same command to resume")
                tables.append({"round": round, "table": name, "state": state, "rows": rows, "detail": detail})
        samples = r.artifact("samples")
        try:
            errors = [e for e in samples.read_table().column("error").to_pylist() if e] if samples.complete else []
        except SaviError:  # damaged: its row in the table says so, and how to make it again
            errors = []
        top_errors = sorted(((e, errors.count(e)) for e in set(errors)), key=lambda x: (-x[1], x[0]))[:5]
        described.append({"run": r.name, "path": str(r.path), "busy": busy, "tables": tables,
                          "top_errors": top_errors, "damaged": damaged})
    return described


def _rows(paths: list[Path]) -> int:
    """The rows written so far to the files of an unfinished table. A file that cannot be read counts none: the
    command that resumes the table sets a damaged part aside and does its items again."""
    rows = 0
    for path in paths:
        try:
            rows += pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            continue
    return rows
