"""DuckDB over a workspace: one view per table (samples, questions, ...) across every run and round.

A view covers only finished artifacts (those with a manifest), so a query never sees half-written work. Each view
has a `run` column, and per-round tables a typed `round` column from their `round=<r>` folder. A table with no
artifact yet is still a view, empty and typed, so a query never fails just because a stage has not run. Tables of
an earlier schema version are read with the columns added since, so the rows of every version line up by name.

The tables are read by savi (as `savi status` and the stages read them) and handed to DuckDB in memory. DuckDB
itself then reaches no file and no network: reading or writing files (COPY, read_csv, ATTACH, EXPORT), installing
or loading extensions and spilling to disk are off, and the configuration is locked so that a query cannot turn
them back on. A query can therefore neither overwrite a table that a stage is writing nor read anything outside
the workspace's tables. It may still create temporary tables and views: they live in the query's in-memory
session and are gone when it ends.

A table that cannot be read (cut short, overwritten) is left out with a warning that says how to make it again;
every other table still answers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.core.errors import SaviError, first_line
from stages.core.records import TABLES, TableSpec, to_arrow
from stages.core.store import Run, list_runs, read_table, round_of

log = logging.getLogger("savi")

# Run in this order before the user's SQL: each must precede the one that locks the configuration, and the
# spill folder can no longer be changed once external access is off.
LOCKDOWN = (
    "SET temp_directory = ''",  # an in-memory session would otherwise spill to ./.tmp
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET python_enable_replacements = false",  # a table name must not resolve to a Python variable of savi's
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)

NO_SQL_HINT = ("pass a query, e.g. `savi query \"select count(*) from samples\"`, or `-` to read it from stdin "
               "(`savi query - < examples/queries/eval_accuracy.sql`)")


def connect(workspace: str | Path | None = None, run: str | None = None):
    """An in-memory DuckDB connection holding one view per table, closed to files, network and configuration."""
    import duckdb

    runs = [r for r in list_runs(workspace) if run is None or r.name == run]
    if run is not None and not runs:
        raise SaviError(f"no run named '{run}' in the workspace")
    views = {name: _view(spec, runs) for name, spec in TABLES.items()}
    con = duckdb.connect()
    try:
        for name, table in views.items():
            con.register(name, table)
        for setting in LOCKDOWN:
            con.execute(setting)
    except BaseException:
        con.close()
        raise
    return con


def _view(spec: TableSpec, runs: list[Run]) -> pa.Table:
    """Every finished `spec` table of `runs`, stacked, with `run` first and (per round) `round` last."""
    per_round = spec.name != "samples"
    tables = []
    for r in runs:
        for art in r.artifacts(spec.name):
            if not art.complete:
                continue
            try:
                table = read_table(art.path, spec)
            except SaviError as e:
                log.warning(f"{e} (left out of this query)")
                continue
            tables.append(_placed(table, r.name, round_of(art.path), per_round))
    if not tables:  # typed even when empty, so that a query written for later work runs now
        tables = [_placed(to_arrow(spec, []), None, None, per_round)]
    # read_table gives every table the current columns; one with columns of its own beyond them (written outside
    # savi) keeps them, with nulls in the rows of the other tables, as a union by name would.
    return pa.concat_tables(tables, promote_options="permissive")


def _placed(table: pa.Table, run: str | None, round: int | None, per_round: bool) -> pa.Table:
    """`table` with the run it belongs to as its first column and, for a per-round table, its round as its last
    (where DuckDB's hive partitioning put it before the views were built this way)."""
    table = table.replace_schema_metadata(None)  # savi's stamps differ from file to file and mean nothing here
    table = table.add_column(0, "run", pa.repeat(pa.scalar(run, pa.string()), table.num_rows))
    if per_round:
        table = table.append_column("round", pa.repeat(pa.scalar(round, pa.int64()), table.num_rows))
    return table


def run_query(sql: str, workspace: str | Path | None = None,
              run: str | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run SQL against the workspace views. Returns (column names, rows).

    Every DuckDB error, from building the views or from the query, is a one-line SaviError."""
    import duckdb

    try:
        if not duckdb.extract_statements(sql):
            raise SaviError(f"no SQL to run (the query is empty or only comments); {NO_SQL_HINT}")
        con = connect(workspace, run)
        try:
            cursor = con.execute(sql)
            if cursor.description is None:
                return [], []
            return [d[0] for d in cursor.description], cursor.fetchall()
        finally:
            con.close()
    except duckdb.Error as e:
        raise SaviError(f"query failed: {first_line(e)} (views: {', '.join(TABLES)})") from None
