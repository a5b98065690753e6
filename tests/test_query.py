"""`savi query` and `savi status` through the CLI: queries are read-only and see only the workspace's tables, a
damaged table is left out (query) or shown as damaged (status) while the rest stays readable, and every mistake is
one `Error:` line."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from savi_cli.main import app
from stages.core.records import Answer, Question, Sample, to_arrow
from stages.core.store import ArtifactWriter, open_run, write_json


def write_run(name: str, rounds=(1, 2)):
    """A run with two videos sampled, and two questions about each in every round of `rounds`."""
    run = open_run(name)
    writer = ArtifactWriter(run.artifact("samples"), params={}, inputs={})
    for video_id in ("v1", "v2"):
        writer.add(Sample(video_id=video_id, path=f"/videos/{video_id}.mp4", status="ok", error=None,
                          size_bytes=10, mtime_ns=1))
    writer.add(Sample(video_id="bad", path="/videos/bad.mp4", status="error", error="not a video", size_bytes=1,
                      mtime_ns=1))
    writer.finish()
    for round in rounds:
        writer = ArtifactWriter(run.artifact("questions", round), params={}, inputs={})
        for video_id in ("v1", "v2"):
            writer.add_item(video_id, [Question(f"{video_id}-r{round}-q{n}", video_id, "spatial", f"q{n}?", "json",
                                                "ask/1", "tiny") for n in range(2)])
        writer.finish()
    return run


def query(*args: str, input: str | None = None):
    return CliRunner().invoke(app, ["query", *args, "--format", "csv"], input=input)


def savi(*args: str) -> subprocess.CompletedProcess:
    """savi in a process of its own, so that its stderr is exactly what a user sees (warnings included)."""
    return subprocess.run([sys.executable, "-c", "from savi_cli.main import app; app()", *args],
                          capture_output=True, text=True, timeout=120)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def damage(path, how: str) -> None:
    if how == "cut in half":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("this is not a parquet file\n")


# ---------------------------------------------------------------------------------------------------------------
# What a query may see and do


def test_views_span_runs_and_rounds_with_typed_run_and_round_columns():
    write_run("a")
    write_run("b", rounds=(1,))
    result = query("select run, round, typeof(round) as type, count(*) as n from questions group by all order by all")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["run,round,type,n", "a,1,BIGINT,4", "a,2,BIGINT,4", "b,1,BIGINT,4"]
    result = query("select run, count(*) as n from samples group by 1", "--run", "b")
    assert result.stdout.splitlines() == ["run,n", "b,3"]
    # Every table is a view, empty and typed, before any stage made it.
    result = query("select count(*) as n, typeof(any_value(round)) as type, typeof(any_value(run)) as run_type "
                   "from pairs")
    assert result.stdout.splitlines() == ["n,type,run_type", "0,BIGINT,VARCHAR"]


def test_views_keep_the_columns_of_the_files():
    run = write_run("a")
    columns = query("select * from questions limit 0").stdout.strip().split(",")
    assert columns == ["run", *pq.read_schema(run.artifact("questions", 1).path).names, "round"]
    columns = query("select * from samples limit 0").stdout.strip().split(",")
    assert columns == ["run", *pq.read_schema(run.artifact("samples").path).names]


def test_tables_of_an_earlier_schema_version_are_read_by_name_with_the_new_columns_filled():
    for name, version in (("old", 1), ("new", 2)):
        run = write_run(name, rounds=())
        art = run.artifact("answers", 1)
        answer = Answer("a1", "v1-q0", "v1", "It moves left.", 0.7, 0, 4, True, "answer/1", "tiny",
                        prompt="Where does it move?")
        table = to_arrow(art.spec, [answer])
        if version == 1:  # answers/1 had no prompt column
            table = table.drop_columns(["prompt"]).replace_schema_metadata({b"savi.schema": b"answers/1"})
        art.path.parent.mkdir(parents=True)
        pq.write_table(table, art.path)
        write_json(art.manifest_path, {"schema": f"answers/{version}", "rows": 1, "counts": {}})
    result = query("select run, prompt, text from answers order by run")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["run,prompt,text", "new,Where does it move?,It moves left.",
                                          "old,,It moves left."]


def test_temporary_tables_live_in_the_query_session_only():
    run = write_run("a")
    before = sorted(p.relative_to(run.path) for p in run.path.rglob("*"))
    result = query("create temp table kept as select * from samples where status = 'ok'; select count(*) as n "
                   "from kept")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["n", "2"]
    assert sorted(p.relative_to(run.path) for p in run.path.rglob("*")) == before


@pytest.mark.parametrize("sql", [
    "COPY (select * from samples) TO '{tmp}/x.csv'",
    "COPY (select * from samples limit 0) TO '{samples}' (FORMAT parquet)",
    "select content from read_text('/etc/passwd')",
    "select size from read_blob('{samples}')",
    "select * from read_csv('{tmp}/notes.csv')",
    "select * from read_parquet('{samples}')",
    "select * from '{samples}'",
    "select * from glob('{tmp}/*')",
    "ATTACH '{tmp}/x.db'",
    "EXPORT DATABASE '{tmp}/export'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "select * from read_json('https://example.com/x.json')",
    "SET enable_external_access=true",
    "SET lock_configuration=false",
    "RESET enable_external_access",
    "SET temp_directory='{tmp}/spill'",
])
def test_a_query_cannot_reach_outside_the_workspace_tables(sql, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where duckdb would install extensions
    run = write_run("a")
    samples = run.artifact("samples").path
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    written = samples.read_bytes()
    outside = sorted(tmp_path.iterdir())
    with run.lock():  # another savi command is writing to the run meanwhile
        line = one_error_line(query(sql.format(tmp=tmp_path, samples=samples)))
    assert line.startswith("Error: query failed: "), line
    if sql.startswith(("INSTALL", "LOAD")):
        assert "http" not in line, "it went looking for the extension on the network"
    assert samples.read_bytes() == written
    assert sorted(tmp_path.iterdir()) == outside
    assert not any(home.iterdir())
    assert not (tmp_path / ".tmp").exists()


# ---------------------------------------------------------------------------------------------------------------
# Mistakes are one line


@pytest.mark.parametrize("sql, stdin", [("", None), ("   ", None), ("-", ""), ("-", "-- a comment\n"),
                                        ("/* nothing */ ;", None)])
def test_no_sql_is_one_line_with_a_hint(sql, stdin):
    write_run("a")
    line = one_error_line(query(sql, input=stdin))
    assert line.startswith("Error: no SQL to run"), line
    assert "savi query \"select" in line


def test_a_duckdb_error_while_making_the_views_is_one_line(monkeypatch):
    import duckdb

    write_run("a")

    class Refusing:
        """A connection that refuses every table it is given."""

        def __init__(self, con):
            self.con = con

        def register(self, name, table):
            raise duckdb.InvalidInputException(f"cannot register {name}\nsecond line")

        def __getattr__(self, name):
            return getattr(self.con, name)

    real_connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: Refusing(real_connect(*a, **k)))
    line = one_error_line(query("select 1"))
    assert line.startswith("Error: query failed: "), line
    assert "cannot register samples" in line


def test_a_query_error_is_one_line():
    write_run("a")
    line = one_error_line(query("select * from nope"))
    assert line.startswith("Error: query failed: Catalog Error: Table with name nope does not exist"), line


# ---------------------------------------------------------------------------------------------------------------
# Damaged tables


@pytest.mark.parametrize("how", ["cut in half", "not parquet"])
def test_a_damaged_table_is_left_out_of_queries_with_one_warning(how, workspace):
    run = write_run("a")
    write_run("b")
    damaged = run.artifact("questions", 1).path
    damage(damaged, how)
    result = savi("query", "select run, round, count(*) as n from questions group by all order by all",
                  "--format", "csv", "--workspace", str(workspace))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["run,round,n", "a,2,4", "b,1,4", "b,2,4"]
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"warning: {damaged} is damaged ("), warning
    assert "make it again with `savi ask --run a --round 1 --force`" in warning
    # Every other view of the same run still answers.
    result = savi("query", "select count(*) as n from samples", "--format", "csv", "--workspace", str(workspace))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["n", "6"]
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("how", ["cut in half", "not parquet"])
def test_status_shows_a_damaged_table_and_how_to_make_it_again(how):
    run = write_run("a")
    damaged = run.artifact("questions", 1).path
    damage(damaged, how)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("1 ") and "questions" in line]
    assert row.split()[:3] == ["1", "questions", "damaged"]
    assert "make it again with `savi ask --run a --round 1 --force`" in row
    assert any(line.split()[:3] == ["2", "questions", "done"] for line in result.stdout.splitlines())
    # Below the table, the whole reason: which file, and what is wrong with it.
    assert f"\n  {damaged} is damaged (" in result.stdout


@pytest.mark.parametrize("how", ["cut in half", "not parquet"])
def test_status_with_damaged_samples_does_not_crash(how):
    run = write_run("a")
    damage(run.artifact("samples").path, how)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if "samples" in line.split()[:1]]
    assert row.split()[:2] == ["samples", "damaged"]
    assert "make it again with `savi sample" in row
    assert "x not a video" not in result.stdout  # the top errors come from the samples table, unreadable now
