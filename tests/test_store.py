"""The artifact store: atomic writes, manifests, resume, params/inputs rules, schema stamps, locks, DuckDB views."""

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core.errors import SaviError
from stages.core.query import run_query
from stages.core.records import QUESTIONS, SAMPLES, Question, Sample, to_arrow
from stages.core.store import ArtifactWriter, atomic_path, open_run, read_table, written_records


def question(video_id: str, n: int) -> Question:
    return Question(question_id=f"{video_id}-q{n}", video_id=video_id, kind="spatial", text=f"question {n}?",
                    parsed_as="json", prompt_version="ask/1", model="tiny")


def sample(video_id: str, status: str = "ok") -> Sample:
    return Sample(video_id=video_id, path=f"/videos/{video_id}.mp4", status=status,
                  error=None if status == "ok" else "broken", size_bytes=10, mtime_ns=1)


def write_questions(run, round, rows, params=None, inputs=None, **kw):
    """Write questions the way `ask` does: all of a video's questions as one item."""
    writer = ArtifactWriter(run.artifact("questions", round), params=params or {"per_video": 2},
                            inputs=inputs or {"samples": "abc"}, **kw)
    if not writer.up_to_date:
        for video_id in dict.fromkeys(r.video_id for r in rows):
            writer.add_item(video_id, [r for r in rows if r.video_id == video_id])
        writer.finish()
    return writer


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_finish_writes_table_then_manifest_and_removes_parts():
    run = open_run("r")
    writer = write_questions(run, 1, [question("v1", 1), question("v1", 0), question("v0", 3)])
    art = run.artifact("questions", 1)
    assert art.complete and not art.parts_dir.exists()
    table = read_table(art.path, QUESTIONS)
    assert table.column("question_id").to_pylist() == ["v0-q3", "v1-q0", "v1-q1"]  # sorted by the spec order
    assert pq.read_schema(art.path).metadata[b"savi.schema"] == b"questions/2"
    manifest = json.loads(art.manifest_path.read_text())
    assert manifest["schema"] == "questions/2"
    assert manifest["rows"] == 3 and manifest["params"] == {"per_video": 2}
    assert manifest["inputs"] == {"samples": "abc"}
    assert manifest["code_version"].startswith("0.1.0")
    assert manifest["finished_at"] >= manifest["started_at"]
    assert not writer.resumed


def test_same_params_and_inputs_do_nothing():
    run = open_run("r")
    write_questions(run, 1, [question("v1", 1)])
    art = run.artifact("questions", 1)
    before = (art.path.stat().st_mtime_ns, art.manifest_path.stat().st_mtime_ns)
    writer = write_questions(run, 1, [question("v1", 2)])
    assert writer.up_to_date
    assert (art.path.stat().st_mtime_ns, art.manifest_path.stat().st_mtime_ns) == before
    assert not art.parts_dir.exists()


def test_different_params_refuse_without_force_and_redo_with_it():
    run = open_run("r")
    write_questions(run, 1, [question("v1", 1)])
    with pytest.raises(SaviError, match=r"different parameters \(per_video: 2 -> 5\).*--force"):
        write_questions(run, 1, [question("v1", 2)], params={"per_video": 5})
    write_questions(run, 1, [question("v1", 2)], params={"per_video": 5}, force=True)
    assert [q.question_id for q in run.artifact("questions", 1).read()] == ["v1-q2"]


def test_changed_inputs_refuse_unless_incremental():
    run = open_run("r")
    write_questions(run, 1, [question("v1", 1)])
    with pytest.raises(SaviError, match="inputs .* changed"):
        write_questions(run, 1, [question("v2", 1)], inputs={"samples": "def"})
    write_questions(run, 1, [question("v1", 1), question("v2", 1)], inputs={"samples": "def"}, incremental=True)
    assert [q.question_id for q in run.artifact("questions", 1).read()] == ["v1-q1", "v2-q1"]


def test_resume_skips_flushed_items_and_never_duplicates():
    run = open_run("r")
    art = run.artifact("questions", 1)
    first = ArtifactWriter(art, params={"p": 1}, inputs={}, flush_rows=2)
    for n in range(5):
        first.add_item(f"v{n}", [question(f"v{n}", 0)])
    # Crash without finish: 4 items were flushed in two parts, the 5th was still in memory.
    assert len(written_records(art)) == 4 and not art.complete

    second = ArtifactWriter(art, params={"p": 1}, inputs={})
    assert second.resumed and second.done_items == {f"v{n}" for n in range(4)}
    for n in range(7):
        second.add_item(f"v{n}", [question(f"v{n}", 0)])
    second.finish()
    ids = [q.question_id for q in art.read()]
    assert ids == [f"v{n}-q0" for n in range(7)]


def test_an_item_is_flushed_whole_and_an_empty_item_stays_done():
    run = open_run("r")
    art = run.artifact("questions", 1)
    writer = ArtifactWriter(art, params={"p": 1}, inputs={}, flush_rows=1)
    writer.add_item("v1", [question("v1", n) for n in range(3)])
    writer.add_item("v2", [])  # e.g. the model's output could not be parsed
    # Both items are on disk: the three rows together, and v2 as done without rows.
    assert len(written_records(art)) == 3
    resumed = ArtifactWriter(art, params={"p": 1}, inputs={})
    assert resumed.done_items == {"v1", "v2"}
    resumed.add_item("v3", [question("v3", 0)])
    resumed.finish()
    # Even after finishing, an incremental rerun knows v2 was done.
    again = ArtifactWriter(art, params={"p": 1}, inputs={"more": 1}, incremental=True)
    assert again.done_items == {"v1", "v2", "v3"}


def test_resume_with_different_params_is_refused():
    run = open_run("r")
    art = run.artifact("questions", 1)
    writer = ArtifactWriter(art, params={"p": 1}, inputs={}, flush_rows=1)
    writer.add_item("v", [question("v", 0)])
    with pytest.raises(SaviError, match=r"interrupted run .* \(p: 1 -> 2\)"):
        ArtifactWriter(art, params={"p": 2}, inputs={})


def test_newer_or_foreign_schema_is_a_clear_error():
    run = open_run("r")
    write_questions(run, 1, [question("v1", 1)])
    art = run.artifact("questions", 1)
    table = pq.read_table(art.path).replace_schema_metadata({b"savi.schema": b"questions/99"})
    pq.write_table(table, art.path)
    with pytest.raises(SaviError, match=r"schema questions/99, newer than this savi understands \(questions/2\)"):
        art.read()
    pq.write_table(pa.table({"x": [1]}), art.path)
    with pytest.raises(SaviError, match="is not a savi 'questions' table"):
        art.read()


def test_newer_schema_through_the_cli_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from savi_cli.main import app

    run = open_run("r")
    write_questions(run, 1, [question("v1", 1)])
    manifest = run.artifact("questions", 1).manifest_path
    manifest.write_text(manifest.read_text().replace('"questions/2"', '"questions/7"'))
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {manifest} has schema questions/7, newer than this savi understands (questions/2); "
        "upgrade savi, or rewrite the table with --force"]


def test_a_second_process_cannot_take_the_run_lock():
    run = open_run("r")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from stages.core.store import Run
        from pathlib import Path
        with Run(Path({str(run.path)!r})).lock():
            print("locked", flush=True)
            time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run.is_locked()
        with pytest.raises(SaviError, match=r"run 'r' is in use by another savi process \(pid \d+"):
            with run.lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock of a killed process: no stale lock.
    assert not run.is_locked()
    with run.lock():
        pass


KILLED_WRITER = """
import sys, time
from pathlib import Path
from stages.core.records import Question
from stages.core.store import ArtifactWriter, Run

run = Run(Path(sys.argv[1]))
writer = ArtifactWriter(run.artifact("questions", 1), params={"n": 60}, inputs={}, flush_rows=3)
if not writer.up_to_date:
    for n in range(60):
        video = f"v{n:02d}"
        if video in writer.done_items:
            continue
        time.sleep(0.01)
        writer.add_item(video, [Question(f"{video}-q{k}", video, "temporal", f"q {k}", "json", "ask/1", "tiny")
                                for k in range(n % 3)])  # 0, 1 or 2 questions per video
    writer.finish()
"""


def parts_written(art) -> int:
    return len(list(art.parts_dir.glob("part-*.parquet.part")))


def kill_after_progress(script, run, art, new_parts: int) -> bool:
    """Start the writer, SIGKILL it as soon as it has flushed `new_parts` more parts than before. True if the kill
    landed mid-work; False if the writer finished first (it had fewer parts left to write)."""
    target = parts_written(art) + new_parts
    proc = subprocess.Popen([sys.executable, str(script), str(run.path)])
    deadline = time.monotonic() + 120  # only against a hang; the kill itself waits for progress, not time
    try:
        while parts_written(art) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the writer made no progress in 120 s"
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)  # nothing if it has already finished
        proc.wait()
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0, f"the writer failed with exit code {proc.returncode}"
        return False
    assert not art.complete
    return True


def test_kill_9_at_random_moments_then_resume_leaves_every_item_exactly_once(tmp_path):
    """Each kill comes right after the writer flushed a random number (1-3) of new parts, so every kill lands
    mid-work however fast or loaded the machine is. If a writer ever finishes first, the run starts over fresh:
    the test never accepts fewer kills."""
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    rng = random.Random(7)
    for attempt in range(5):
        run = open_run(f"killed{attempt}")
        art = run.artifact("questions", 1)
        kills = 0
        while kills < 4 and kill_after_progress(script, run, art, rng.randint(1, 3)):
            kills += 1
        if kills == 4:
            break
    assert kills == 4  # the test is only meaningful if it really interrupted the writer, again and again
    assert art.in_progress and parts_written(art) >= 4  # each kill came after at least one new part
    subprocess.run([sys.executable, str(script), str(run.path)], check=True)
    ids = [q.question_id for q in art.read()]
    assert ids == [f"v{n:02d}-q{k}" for n in range(60) for k in range(n % 3)]
    assert ArtifactWriter(art, params={"n": 60}, inputs={"x": 1}, incremental=True).done_items == \
        {f"v{n:02d}" for n in range(60)}
    assert art.complete and not art.parts_dir.exists()
    assert art.manifest()["resumed"] is True
    assert not list(art.path.parent.glob(".*tmp*"))
    # And once finished, running again is a no-op.
    subprocess.run([sys.executable, str(script), str(run.path)], check=True)
    assert [q.question_id for q in art.read()] == ids


def test_duckdb_views_join_samples_and_questions_across_rounds_and_runs():
    for name in ("a", "b"):
        run = open_run(name)
        writer = ArtifactWriter(run.artifact("samples"), params={}, inputs={})
        for vid in ("v1", "v2"):
            writer.add(sample(vid))
        writer.add(sample("bad", status="error"))
        writer.finish()
        write_questions(run, 1, [question("v1", 0), question("v2", 0)])
        write_questions(run, 2, [question("v1", 1), question("v1", 2), question("v2", 1)])
    columns, rows = run_query(
        "select q.run, q.round, count(*) as n from questions q join samples s "
        "on q.video_id = s.video_id and q.run = s.run where s.status = 'ok' group by all order by all")
    assert columns == ["run", "round", "n"]
    assert rows == [("a", 1, 2), ("a", 2, 3), ("b", 1, 2), ("b", 2, 3)]
    _, typed = run_query("select typeof(round) from questions limit 1")
    assert typed == [("BIGINT",)]
    # A round's questions joined against the previous round's: same video, new question.
    _, later = run_query("select count(*) from questions q2 join questions q1 on q1.video_id = q2.video_id "
                         "and q1.run = q2.run and q2.round = q1.round + 1 where q2.run = 'a'")
    assert later == [(3,)]  # v1: 2 round-2 x 1 round-1, v2: 1 x 1
    assert run_query("select count(*) from samples", run="b")[1] == [(3,)]


def test_views_hide_unfinished_tables_and_exist_when_empty():
    run = open_run("r")
    writer = ArtifactWriter(run.artifact("questions", 1), params={}, inputs={}, flush_rows=1)
    writer.add_item("v", [question("v", 0)])  # flushed as a part, never finished
    assert run_query("select count(*) from questions")[1] == [(0,)]
    assert run_query("select count(*) from samples")[1] == [(0,)]
    # Per-round views have their round column before any round finished, so queries written for later work.
    for table in ("questions", "answers", "critiques", "pairs", "train_log", "evals"):
        assert run_query(f"select round, count(*) from {table} group by 1")[1] == []
    with pytest.raises(SaviError, match="query failed: .*nope"):
        run_query("select * from nope")


def test_to_arrow_round_trips_every_field_type():
    row = sample("v1")
    row.frame_indices, row.timestamps_s, row.rotation = [1, 5], [0.1, 0.5], 90
    table = to_arrow(SAMPLES, [row])
    assert table.schema.field("frame_indices").type == pa.list_(pa.int64())
    assert not table.schema.field("video_id").nullable and table.schema.field("error").nullable
    from stages.core.records import from_arrow
    assert from_arrow(SAMPLES, table) == [row]
