"""`savi status`: what each run of a workspace holds, table by table, and whether anything is unfinished."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from stages.core.records import TABLES
from stages.core.store import existing_run, list_runs, round_of


def describe_runs(workspace: str | Path | None = None, run: str | None = None) -> list[dict[str, Any]]:
    """What each run holds: per table its state (done, running, interrupted), rows and counts; top errors."""
    runs = [existing_run(run, workspace)] if run else list_runs(workspace)
    described = []
    for r in runs:
        busy = r.is_locked()
        tables = []
        arts = [a for name in TABLES for a in r.artifacts(name)]
        for art in sorted(arts, key=lambda a: (round_of(a.path) or 0, a.spec.name == "evals")):
            round, name = round_of(art.path), art.name if art.spec.name != "evals" else f"eval/{art.name}"
            if art.complete and not art.in_progress:
                manifest = art.manifest() or {}
                counts = ", ".join(f"{k} {v}" for k, v in manifest.get("counts", {}).items())
                tables.append({"round": round, "table": name, "state": "done", "rows": manifest.get("rows"),
                               "detail": counts})
            elif art.in_progress or art.path.is_file():
                rows = sum(pq.ParquetFile(p).metadata.num_rows for p in art.parts_dir.glob("part-*.parquet.part"))
                if art.path.is_file():
                    rows += pq.ParquetFile(art.path).metadata.num_rows
                state, detail = ("running", "") if busy else ("interrupted", "rerun the same command to resume")
                tables.append({"round": round, "table": name, "state": state, "rows": rows, "detail": detail})
        top_errors: list[tuple[str, int]] = []
        samples = r.artifact("samples")
        if samples.complete:
            errors = [e for e in samples.read_table().column("error").to_pylist() if e]
            top_errors = sorted(((e, errors.count(e)) for e in set(errors)), key=lambda x: (-x[1], x[0]))[:5]
        described.append({"run": r.name, "path": str(r.path), "busy": busy, "tables": tables,
                          "top_errors": top_errors})
    return described
