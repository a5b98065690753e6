"""DuckDB over a workspace: one view per table (samples, questions, ...) across every run and round.

A view covers only finished artifacts (those with a manifest), so a query never sees half-written work. Each view
has a `run` column, and per-round tables a typed `round` column from their `round=<r>` folder (hive
partitioning). A table with no artifact yet is still a view, empty and typed, so a query never fails just
because a stage has not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.core.errors import SaviError
from stages.core.records import TABLES, to_arrow
from stages.core.store import list_runs


def connect(workspace: str | Path | None = None, run: str | None = None):
    """An in-memory DuckDB connection with the views defined."""
    import duckdb

    con = duckdb.connect()
    runs = [r for r in list_runs(workspace) if run is None or r.name == run]
    if run is not None and not runs:
        raise SaviError(f"no run named '{run}' in the workspace")
    for name, spec in TABLES.items():
        selects = []
        for r in runs:
            for art in r.artifacts(name):
                if art.complete:
                    selects.append(_select(art.path, r.name, name != "samples"))
        if selects:
            con.execute(f"CREATE VIEW {name} AS " + " UNION ALL BY NAME ".join(selects))
        else:
            con.register(f"_empty_{name}", to_arrow(spec, []))
            round_column = "" if name == "samples" else ", NULL::BIGINT AS round"
            con.execute(f"CREATE VIEW {name} AS SELECT NULL::VARCHAR AS run, *{round_column} "
                        f"FROM _empty_{name} LIMIT 0")
    return con


def _select(path: Path, run: str, per_round: bool) -> str:
    literal = str(path).replace("'", "''")
    run_literal = run.replace("'", "''")
    hive = str(per_round).lower()
    return f"SELECT '{run_literal}' AS run, * FROM read_parquet('{literal}', hive_partitioning={hive})"


def run_query(sql: str, workspace: str | Path | None = None,
              run: str | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run SQL against the workspace views. Returns (column names, rows)."""
    import duckdb

    con = connect(workspace, run)
    try:
        cursor = con.execute(sql)
        if cursor.description is None:
            return [], []
        columns = [d[0] for d in cursor.description]
        return columns, cursor.fetchall()
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0]
        raise SaviError(f"query failed: {first} (views: {', '.join(TABLES)})") from None
    finally:
        con.close()
