"""The artifact store: where a run's tables live, and how they are written so that nothing is ever lost.

Layout of a workspace (default `./runs`, or `$SAVI_HOME`, or `--workspace`):

    <run>/savi.toml                      resolved configuration of the run
    <run>/frames/<video_id>/<k>.jpg      sampled frames, written once
    <run>/samples.parquet                one row per video (+ samples.manifest.json)
    <run>/round=<r>/<table>.parquet      per-round tables (+ <table>.manifest.json)

How a table is written (`ArtifactWriter`):
1. A `.<table>.parts/` folder is created beside the table with `started.json` (the parameters).
2. Finished rows are flushed in small batches as `part-*.parquet.part` files. Each is written to a temporary name
   and renamed, so a part is either whole or absent.
3. `finish()` merges the previous table (if any) and the parts, drops duplicate keys, sorts, and writes the
   table atomically. Only then is the manifest written. The parts folder is removed last.

Under `accelerate launch` (`stages/core/launch.py`) every process of the launch opens the same writer and flushes
its own parts (`part-r<rank>-*`); only the main process clears old parts, and `gather()` lets it alone finish the
table once every process has flushed its share.

A kill at any moment therefore leaves either a finished table (its manifest exists), or a parts folder from
which the same command resumes, skipping every key already flushed. The manifest is the proof of completion:
readers and DuckDB views only see tables that have one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core import launch as launches
from stages.core.errors import SaviError, first_line
from stages.core.records import SCHEMA_METADATA_KEY, TABLES, TableSpec, from_arrow, to_arrow, upgrade

log = logging.getLogger("savi")

DEFAULT_WORKSPACE = "runs"
DEFAULT_RUN = "default"  # the run a command works on when none is named
ITEMS_METADATA_KEY = b"savi.empty_items"


# ---------------------------------------------------------------------------------------------------------------
# Atomic files


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it takes the place of `path`.

    An earlier `path` is renamed aside first and deleted only once the new folder is in place, so at every moment
    one whole folder exists (at `path`, or for an instant only aside), never a half-deleted one.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    aside = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(aside, ignore_errors=True)
        if path.exists():
            os.rename(path, aside)
        os.rename(tmp, path)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output_folder(path: Path, savis: tuple[str, ...], what: str) -> None:
    """Refuse to write `what` into `path` if it is a file, or a folder that holds files savi did not write (savi's
    own outputs carry one of the `savis` files). Never deleting what savi did not write starts here."""
    if path.exists() and not path.is_dir():
        raise SaviError(f"{path} is a file; {what} goes into a folder: give a folder path")
    if path.is_dir() and any(path.iterdir()) and not any((path / name).exists() for name in savis):
        raise SaviError(f"{path} holds files savi did not write, and savi never deletes them; give a new or empty "
                        f"folder for {what}")


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def fingerprint(obj: Any) -> str:
    """A short, stable hash of a JSON-able value (parameters, input lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The savi version plus, in a git checkout, the commit (with `+dirty` for uncommitted changes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("savi")
    except PackageNotFoundError:  # a source tree put on the path without installing it
        release = "unknown"
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=10", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return release
    if not sha:
        return release
    return f"{release}+g{sha}{'.dirty' if dirty else ''}"


# ---------------------------------------------------------------------------------------------------------------
# Workspace, runs and artifacts


def slug(text: str, limit: int = 48) -> str:
    """`text` as a file-name-safe word (letters, digits, '.', '_' and '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit]


def workspace_root(workspace: str | Path | None = None) -> Path:
    return Path(workspace or os.environ.get("SAVI_HOME") or DEFAULT_WORKSPACE)


ROUND_PREFIX = "round="  # a run's per-round folders: round=<r>, hive-style, so DuckDB reads a typed `round` column


def round_of(path: Path) -> int | None:
    """The round a path inside a run belongs to (the `round=<r>` folder above it), or None."""
    for folder in path.parents:
        if folder.name.startswith(ROUND_PREFIX):
            with contextlib.suppress(ValueError):
                return int(folder.name.removeprefix(ROUND_PREFIX))
    return None


def locate(table: Path) -> tuple[Run, int | None]:
    """The run and round of a table path a stage printed (`<run>/[round=<r>/]<table>.parquet`)."""
    in_round = table.parent.name.startswith(ROUND_PREFIX)
    run_dir = table.parent.parent if in_round else table.parent
    if table.suffix != ".parquet" or not (run_dir / "samples.parquet").exists():
        raise SaviError(f"{table} is not a table of a savi run (expected .../<run>/[round=<r>/]<table>.parquet)")
    return Run(run_dir), round_of(table) if in_round else None


@dataclasses.dataclass(frozen=True)
class Run:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def frames_dir(self) -> Path:
        return self.path / "frames"

    def round_dir(self, round: int) -> Path:
        return self.path / f"{ROUND_PREFIX}{round}"

    def artifact(self, table: str, round: int | None = None) -> Artifact:
        folder = self.path if round is None else self.round_dir(round)
        return Artifact(folder / f"{table}.parquet", TABLES[table])

    def eval_artifact(self, benchmark: str, round: int) -> Artifact:
        """One benchmark's predictions: `round=<r>/eval/<benchmark>.parquet` (round 0 is the base model)."""
        return Artifact(self.round_dir(round) / "eval" / f"{benchmark}.parquet", TABLES["evals"])

    def artifacts(self, table: str) -> list[Artifact]:
        """Every artifact of `table` in this run, finished or not: one per round, or one per benchmark and round."""
        if table == "evals":
            found = []
            for r in self.rounds():
                folder = self.round_dir(r) / "eval"
                names = {p.name.removesuffix(".parquet") for p in folder.glob("*.parquet")}
                names |= {p.name[1:].removesuffix(".parts") for p in folder.glob(".*.parts")}  # interrupted
                found += [self.eval_artifact(name, r) for name in sorted(names)]
            return found
        if table == "samples":
            return [self.artifact(table)]
        return [self.artifact(table, r) for r in self.rounds()]

    def require(self, table: str, round: int | None = None) -> Artifact:
        """A finished table of this run, or an error saying which command makes it."""
        art = self.artifact(table, round)
        if not art.complete:
            where = f"run '{self.name}'" if round is None else f"round {round} of run '{self.name}'"
            command = f"savi {art.spec.made_by} --run {self.name}" + ("" if round is None else f" --round {round}")
            if art.spec.made_by == "sample":
                command = f"savi sample VIDEOS --run {self.name}"
            raise SaviError(f"{where} has no {table} yet; run `{command}` first")
        return art

    def rounds(self) -> list[int]:
        return sorted(r for d in self.path.glob(f"{ROUND_PREFIX}*") if (r := round_of(d / "x")) is not None)

    def is_locked(self) -> bool:
        """Whether a savi command is writing to this run right now."""
        lock_file = self.path / ".lock"
        if not lock_file.is_file():
            return False
        fd = os.open(lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def holder_for_children(self) -> dict[str, str]:
        """The environment that lets the commands this one starts write to the run it holds (while it waits)."""
        return {HELD_BY_PARENT: f"{self.path.resolve()} {(self.path / '.lock').read_text().strip()}"}

    @contextlib.contextmanager
    def lock(self, launch: launches.Launch = launches.Launch()) -> Iterator[None]:
        """Hold the run for one writing command. A second one gets a clear error instead of interleaving writes.

        flock is released by the kernel when the process dies, so a killed command never leaves a stale lock.
        For a command whose work the processes of a launch share (`launch`, see `stages/core/launch.py`), the main
        process holds it for all of them and tells them whether it got it; a process refused for that reason leaves
        the one error line to the main one.
        """
        if not launch.is_main:
            if launch.from_main(None) is not None:
                raise SystemExit(1)
            yield
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock_file = self.path / ".lock"
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_by_parent = False
            except BlockingIOError:
                holder = lock_file.read_text().strip() or "unknown"
                # The command that started this one (`savi round --launch`) may hold the run, waiting for us.
                held_by_parent = os.environ.get(HELD_BY_PARENT) == f"{self.path.resolve()} {holder}"
                if not held_by_parent:
                    refusal = (f"run '{self.name}' is in use by another savi process ({holder}); wait for it to "
                               "finish or stop it")
                    launch.from_main(refusal)
                    raise SaviError(refusal) from None
            launch.from_main(None)
            if not held_by_parent:
                holder = f"pid {os.getpid()} on {socket.gethostname()}"
                os.ftruncate(fd, 0)
                os.write(fd, (holder + (f", the main process of {launch.describe()}" if launch.parallel else "")
                              ).encode())
            yield
        finally:
            if created and os.listdir(self.path) == [".lock"]:
                # The command failed before writing anything (a typo in a path): leave no empty run behind.
                lock_file.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            os.close(fd)


# Set by a command that holds a run for the commands it starts (`savi round --launch`): "<run folder> <holder>".
HELD_BY_PARENT = "SAVI_RUN_HELD_BY_PARENT"


# A run's name is a folder name, a word in every printed table path, and safe in a shell pipe: no spaces, no
# quotes, no newline, no "=" (a `round=<r>` folder is a round, not a run), at most 100 characters.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def open_run(name: str, workspace: str | Path | None = None) -> Run:
    if not RUN_NAME.fullmatch(name or ""):
        raise SaviError(f"invalid run name {name!r}: use up to 100 letters, digits, '.', '-' or '_', starting with "
                        "a letter or digit")
    root = workspace_root(workspace)
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                raise SaviError(f"the workspace {root} is not a folder ({folder} is a file); point --workspace "
                                "(or SAVI_HOME) at a folder")
            break
    return Run(root / name)


def existing_run(name: str, workspace: str | Path | None = None) -> Run:
    run = open_run(name, workspace)
    if not run.path.is_dir():
        known = ", ".join(r.name for r in list_runs(workspace)) or "none"
        raise SaviError(f"no run named '{name}' in {workspace_root(workspace)} (runs: {known}); "
                        f"create it with `savi sample VIDEOS --run {name}`")
    return run


def list_runs(workspace: str | Path | None = None) -> list[Run]:
    root = workspace_root(workspace)
    if not root.is_dir():
        return []
    return [Run(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One table of a run: `<name>.parquet`, its manifest, and (while being written) its parts folder."""

    path: Path
    spec: TableSpec

    @property
    def name(self) -> str:
        """The file's name without `.parquet`: the table name, or the benchmark for an eval table."""
        return self.path.name.removesuffix(".parquet")

    @property
    def manifest_path(self) -> Path:
        return self.path.with_name(f"{self.name}.manifest.json")

    @property
    def parts_dir(self) -> Path:
        return self.path.with_name(f".{self.name}.parts")

    @property
    def complete(self) -> bool:
        return self.manifest_path.is_file() and self.path.is_file()

    @property
    def in_progress(self) -> bool:
        return self.parts_dir.is_dir()

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        manifest = json.loads(self.manifest_path.read_text())
        check_stamp(manifest.get("schema", ""), self.spec, self.manifest_path)
        return manifest

    def read_table(self) -> pa.Table:
        if not self.complete:
            raise SaviError(f"{self.path} is not finished (no manifest); run the stage that writes it first")
        return read_table(self.path, self.spec)

    def read(self) -> list[Any]:
        return from_arrow(self.spec, self.read_table())


def check_stamp(stamp: str, spec: TableSpec, where: Path) -> None:
    name, _, version = stamp.partition("/")
    if name != spec.name or not version.isdigit():
        raise SaviError(f"{where} is not a savi '{spec.name}' table (schema stamp {stamp!r})")
    if int(version) > spec.version:
        raise SaviError(f"{where} has schema {stamp}, newer than this savi understands ({spec.stamp}); "
                        "upgrade savi, or rewrite the table with --force")


def read_table(path: Path, spec: TableSpec) -> pa.Table:
    """A table file in the current schema: an earlier version gets the columns added since, with their defaults.

    A file that is not a whole Parquet file (cut short, overwritten, edited) is a one-line error that says which
    command makes it again; the rest of the workspace stays readable."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        stamp = metadata.get(SCHEMA_METADATA_KEY, b"").decode()
        check_stamp(stamp, spec, path)
        table = pq.read_table(path)
    except PermissionError:
        raise
    except (pa.ArrowInvalid, pa.lib.ArrowIOError) as e:
        raise SaviError(f"{path} is damaged ({first_line(e, 120)}); {redo_hint(path, spec)}") from None
    if stamp == spec.stamp and set(spec.schema.names) <= set(table.column_names):
        return table
    try:
        return upgrade(spec, table)
    except ValueError as e:
        raise SaviError(f"{path} ({stamp}) cannot be read as {spec.stamp}: {e}; {redo_hint(path, spec)}") from None


def redo_hint(path: Path, spec: TableSpec) -> str:
    """How to make a run's table again, for an error message: `savi <stage> --run R --round N --force`."""
    round = round_of(path)
    run_dir = path.parent if round is None else next(d for d in path.parents if d.name.startswith(ROUND_PREFIX)).parent
    where = f"--run {run_dir.name}" + (f" --round {round}" if round is not None else "")
    command = {"evals": "savi eval BENCHMARK --data DIR", "samples": "savi sample VIDEOS"}.get(spec.name,
                                                                                              f"savi {spec.made_by}")
    return f"make it again with `{command} {where} --force`"


# ---------------------------------------------------------------------------------------------------------------
# Resumable writing


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a stage command reports: its table, how many items it did now, and the manifest's counts."""

    path: Path
    items_done: int
    rows_added: int
    up_to_date: bool
    counts: dict[str, Any]


Progress = Callable[[int], Callable[[], None]]  # progress(total items) -> tick, called once per finished item


def ticker(progress: Progress | None, total: int) -> Callable[[], None]:
    """The tick of a progress display over `total` items (a no-op without one, or with nothing to do)."""
    return progress(total) if progress and total else (lambda: None)


def written_tables(artifact: Artifact, *, with_table: bool = True) -> list[pa.Table]:
    """Everything already written for `artifact`: the table (finished or not, unless `with_table` is False) and any
    flushed parts. A part that cannot be read (only something outside savi can damage one: parts are written whole
    or not at all) is set aside as `*.damaged`, and its items are done again."""
    tables = [read_table(artifact.path, artifact.spec)] if with_table and artifact.path.is_file() else []
    for part in sorted(artifact.parts_dir.glob("part-*.parquet.part")):
        try:
            tables.append(read_table(part, artifact.spec))
        except SaviError:
            with contextlib.suppress(FileNotFoundError):  # another process of a launch set it aside first
                os.replace(part, part.with_suffix(".damaged"))
            log.warning(f"{part} is damaged: set aside as {part.with_suffix('.damaged').name}; its items are "
                        "done again")
    return tables


def written_records(artifact: Artifact, *, with_table: bool = True) -> list[Any]:
    return [r for t in written_tables(artifact, with_table=with_table) for r in from_arrow(artifact.spec, t)]


def written_items(artifact: Artifact, *, with_table: bool = True) -> set[Any]:
    """The units of work already done: every value of the table's item column, plus the items that produced no
    rows (recorded in the file metadata, so a rerun does not redo them)."""
    done: set[Any] = set()
    for table in written_tables(artifact, with_table=with_table):
        done.update(table.column(artifact.spec.item).to_pylist())
        done.update(json.loads((table.schema.metadata or {}).get(ITEMS_METADATA_KEY, b"[]")))
    return done


@dataclasses.dataclass
class ArtifactWriter:
    """Write one table item by item, resumably. See the module docstring for the protocol.

    Usage:
        writer = ArtifactWriter(artifact, params=..., inputs=..., force=force)
        if writer.up_to_date: return
        for item in todo:                       # skip items in writer.done_items
            writer.add_item(item, records)      # or writer.add(record) when one record is one item
        writer.finish(counts=...)

    An item is the unit of work (a video for `ask`, an answer for `critique`): its records are flushed together,
    so a kill never leaves half of an item, and an item with no records still counts as done.

    With `launch` (a stage under `accelerate launch`), every process of the launch opens the writer, takes its share
    of the items (`model.pending_batches`), and calls `gather()` before the main process alone finishes the table.

    `params` decide whether existing work may be reused: different params refuse without `force`. `force` redoes
    every item, and the finished table stays in place (readable, and the one a crash leaves) until the new one is
    whole; a killed redo resumes as a redo.
    `inputs` (content hashes of what was read) are recorded; if they changed since the table was finished, the
    writer refuses without `force`, unless `incremental`, where new items are added to the existing table.
    Nothing touches the disk until the first row is flushed, so a command that finds nothing to do leaves no trace.
    """

    artifact: Artifact
    params: dict[str, Any]
    inputs: dict[str, Any]
    force: bool = False
    incremental: bool = False
    flush_rows: int = 64
    flush_seconds: float = 1.0
    # The processes that share the table's items (a stage's `launches.current()`); the default, one process, for
    # a table whose items one process writes.
    launch: launches.Launch = dataclasses.field(default_factory=launches.Launch)

    def __post_init__(self) -> None:
        self.done_items: set[Any] = set()
        self.up_to_date = False
        self.resumed = False
        self.replacing = False  # redoing a finished table (--force): the old one stays until this one is whole
        self._buffer: list[Any] = []
        self._buffer_empty_items: list[Any] = []
        self._buffer_items: list[Any] = []
        self._flushed_items = 0
        self._display: _LaunchDisplay | None = None
        self._last_flush = self._started = time.monotonic()
        self._added = 0
        self._open()
        # No process of a launch flushes a part before the main one has cleared the old ones.
        self.launch.wait_for_everyone()

    @property
    def spec(self) -> TableSpec:
        return self.artifact.spec

    def _open(self) -> None:
        art, params_hash = self.artifact, fingerprint(self.params)
        clears = self.launch.is_main  # the other processes of a launch leave the parts folder to the main one
        if clears and art.parts_dir.is_dir() and not (art.parts_dir / "started.json").is_file():
            # Killed between creating the folder and writing started.json, which precedes every part: empty.
            shutil.rmtree(art.parts_dir, ignore_errors=True)
        if clears:  # an earlier launch's progress counts this one's from zero
            for old in art.parts_dir.glob("progress-r*.json"):
                old.unlink(missing_ok=True)
        if self.force:
            # Redo everything, but keep the finished table (and whatever reads it) until the new one is whole:
            # only the parts of an earlier unfinished run go.
            if clears:
                shutil.rmtree(art.parts_dir, ignore_errors=True)
            self.replacing, self._first_started_at = True, _now()
            return
        manifest = art.manifest() if art.complete else None
        started = self._read_started()
        if manifest is not None and started is None:
            if clears:
                _remove_parts(art)
            if manifest["params_hash"] != params_hash:
                raise SaviError(f"{art.path} was made with different parameters "
                                f"({_describe_change(manifest['params'], self.params)}); "
                                "rerun with the original options, or pass --force to redo it")
            if manifest["inputs"] == self.inputs:
                self.up_to_date = True
                return
            if not self.incremental:
                raise SaviError(f"the inputs of {art.path} changed since it was made; "
                                "pass --force to redo it from the new inputs")
        if started is not None and started["params_hash"] != params_hash:
            raise SaviError(f"an interrupted run of {art.path} used different parameters "
                            f"({_describe_change(started['params'], self.params)}); "
                            "rerun with the original options to resume it, or pass --force to start over")
        self.resumed = started is not None
        self.replacing = bool(started and started.get("replaces"))
        self._first_started_at = started["started_at"] if started else _now()
        self.done_items = written_items(art, with_table=not self.replacing)

    def share_result(self) -> StageResult:
        """The result of a process of a launch whose share is written and whose table another process finishes."""
        return StageResult(self.artifact.path, self._flushed_items, self._added, False, {})

    def cached_result(self) -> StageResult:
        """The result of a stage whose table was already up to date."""
        return StageResult(self.artifact.path, 0, 0, True, self.artifact.manifest()["counts"])

    def finish_result(self, items_done: int, counts: dict[str, Any], *, keep: set[Any] | None = None,
                      notes: dict[str, Any] | None = None) -> StageResult:
        """`finish`, as the result of a stage that did `items_done` items now."""
        manifest = self.finish(counts=counts, notes=notes, keep=keep)
        return StageResult(self.artifact.path, items_done, manifest["rows_added"], False, counts)

    def _read_started(self) -> dict[str, Any] | None:
        path = self.artifact.parts_dir / "started.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def add(self, record: Any) -> bool:
        return self.add_item(getattr(record, self.spec.item), [record])

    def add_item(self, item: Any, records: list[Any]) -> bool:
        """Record a finished item; False (and nothing written) if it was already done."""
        if item in self.done_items:
            return False
        self.done_items.add(item)
        self._buffer_items.append(item)
        self._buffer.extend(records)
        if not records:
            self._buffer_empty_items.append(item)
        self._added += len(records)
        pending = len(self._buffer) + len(self._buffer_empty_items)
        if pending >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        if not self._buffer and not self._buffer_empty_items:
            return
        parts = self.artifact.parts_dir
        if not (parts / "started.json").is_file():
            parts.mkdir(parents=True, exist_ok=True)
            write_json(parts / "started.json", {"params": self.params, "params_hash": fingerprint(self.params),
                                                "started_at": self._first_started_at, "replaces": self.replacing})
        # Each process of a launch numbers its own parts, so two never take the same name.
        prefix = f"part-r{self.launch.rank}-" if self.launch.parallel else "part-"
        index = len(list(parts.glob(f"{prefix}*.parquet.part")))
        while (parts / f"{prefix}{index:06d}.parquet.part").exists():
            index += 1
        table = _with_empty_items(to_arrow(self.spec, self._buffer), self._buffer_empty_items, self.spec)
        write_parquet(parts / f"{prefix}{index:06d}.parquet.part", table)
        self._flushed_items += len(self._buffer_items)
        if self.launch.parallel:
            write_json(parts / f"progress-r{self.launch.rank}.json",
                       {"items": self._flushed_items, "rows": self._added})
        self._buffer, self._buffer_empty_items, self._buffer_items = [], [], []
        self._last_flush = time.monotonic()

    def finish(self, counts: dict[str, Any] | None = None, notes: dict[str, Any] | None = None,
               keep: set[Any] | None = None) -> dict[str, Any]:
        """Merge, write the table, then the manifest (last), then remove the parts. Returns the manifest.

        `keep`: the items the current inputs still have. Rows of any other item are dropped: they were made from
        inputs that have since been redone (ids carry their parents' content, so changed parents mean new
        items), and keeping them would mix two versions of the data.
        """
        self.flush()
        art = self.artifact
        # In a launch, the rows the other processes added too (read before the parts folder goes).
        added = self._added + sum(state.get("rows", 0) for rank, state in self._progress_files().items()
                                  if rank != self.launch.rank)
        merged = pa.concat_tables(written_tables(art, with_table=not self.replacing) or [to_arrow(self.spec, [])])
        merged = _drop_duplicate_keys(merged, self.spec.key)
        stale = 0
        if keep is not None:
            current = pa.array([item in keep for item in merged.column(self.spec.item).to_pylist()], pa.bool_())
            stale = merged.num_rows - (pc.sum(current).as_py() or 0)
            merged = merged.filter(current)
        merged = merged.sort_by([(c, "ascending") for c in self.spec.order])
        empty_items = written_items(art, with_table=not self.replacing) - set(merged.column(self.spec.item).to_pylist())
        if keep is not None:
            empty_items &= keep
        merged = _with_empty_items(merged, sorted(empty_items), self.spec)
        if self.replacing:  # from here on the old table is gone: until the new manifest, nothing looks finished
            art.manifest_path.unlink(missing_ok=True)
        write_parquet(art.path, merged)
        manifest = {
            "artifact": self.spec.name,
            "schema": self.spec.stamp,
            "code_version": code_version(),
            "params": self.params,
            "params_hash": fingerprint(self.params),
            "inputs": self.inputs,
            "rows": merged.num_rows,
            "rows_added": added,
            "counts": counts or {},
            "notes": {**(notes or {}), **({"stale_rows_dropped": stale} if stale else {})},
            "started_at": self._first_started_at,
            "finished_at": _now(),
            "seconds_last_session": round(time.monotonic() - self._started, 3),
            "resumed": self.resumed,
            "host": socket.gethostname(),
            "processes": self.launch.size,
        }
        write_json(art.manifest_path, manifest)
        _remove_parts(art)
        return manifest

    def records(self) -> list[Any]:
        """The rows the finished table will hold, as far as they are written now (the old table's too, unless
        this writer replaces it), one per key: a kill between writing the table and its manifest leaves the same
        rows in the table and in the parts, and `finish` keeps the first copy too."""
        rows: dict[Any, Any] = {}
        for record in written_records(self.artifact, with_table=not self.replacing):
            rows.setdefault(getattr(record, self.spec.key), record)
        return list(rows.values())

    def close(self) -> None:
        """Flush what is done without finishing (on an error or Ctrl-C), so a rerun resumes from here."""
        self.flush()

    def ticker(self, progress: Progress | None, total: int) -> Callable[[], None]:
        """The tick of a progress display over the `total` items still to do, called once per item this process
        finishes. In a launch the main process's display also counts the items the other processes have flushed,
        and the others show none."""
        if not self.launch.parallel:
            return ticker(progress, total)
        if not self.launch.is_main or not progress or not total:
            return lambda: None
        self._display = _LaunchDisplay(progress(total), self._progress_of_others)
        return self._display.tick

    def gather(self) -> bool:
        """Flush this process's share of the items and, in a launch, wait for every process to flush its own.
        True on the process that then finishes the table: the main one (the only one of a one-process command)."""
        self.flush()
        if not self.launch.parallel:
            return True
        self.artifact.parts_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.artifact.parts_dir / f"progress-r{self.launch.rank}.json",
                   {"items": self._flushed_items, "rows": self._added, "done": True})
        if self._display is not None:  # the display keeps moving while the other processes finish their shares
            while sum(state.get("done", False) for state in self._progress_files().values()) < self.launch.size:
                self._display.show_others()
                time.sleep(0.2)
            self._display.show_others()
        self.launch.wait_for_everyone()
        return self.launch.is_main

    def _progress_files(self) -> dict[int, dict[str, Any]]:
        """What each process of the launch has flushed so far: {rank: {"items": n, "rows": n, "done": bool}}."""
        states = {}
        for path in self.artifact.parts_dir.glob("progress-r*.json"):
            with contextlib.suppress(OSError, ValueError):
                states[int(path.stem.removeprefix("progress-r"))] = json.loads(path.read_text())
        return states

    def _progress_of_others(self) -> int:
        return sum(state["items"] for rank, state in self._progress_files().items() if rank != self.launch.rank)


class _LaunchDisplay:
    """The main process's progress display in a launch: its own items as it finishes them, and the other
    processes' as they flush them (read at most once a second)."""

    def __init__(self, tick: Callable[[], None], others: Callable[[], int]):
        self._tick, self._others = tick, others
        self._shown_others, self._read_at = 0, 0.0

    def tick(self) -> None:
        self._tick()
        if time.monotonic() - self._read_at >= 1.0:
            self.show_others()

    def show_others(self) -> None:
        self._read_at = time.monotonic()
        others = self._others()
        for _ in range(others - self._shown_others):
            self._tick()
        self._shown_others = max(others, self._shown_others)


def _remove_parts(art: Artifact) -> None:
    """Remove the parts folder in one step: renamed aside first, so a kill mid-delete cannot leave half of it
    looking like an interrupted run. Leftovers of earlier kills go too."""
    if art.parts_dir.is_dir():
        os.rename(art.parts_dir, art.parts_dir.with_name(f"{art.parts_dir.name}.done-{os.getpid()}"))
    for leftover in art.path.parent.glob(f"{art.parts_dir.name}.done-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in art.path.parent.glob(f".{art.name}.*.tmp-*"):  # files whose write a kill cut short
        leftover.unlink(missing_ok=True)


def _with_empty_items(table: pa.Table, empty_items: list[Any], spec: TableSpec) -> pa.Table:
    metadata = {SCHEMA_METADATA_KEY: spec.stamp.encode()}
    if empty_items:
        metadata[ITEMS_METADATA_KEY] = json.dumps(empty_items).encode()
    return table.replace_schema_metadata(metadata)


def _drop_duplicate_keys(table: pa.Table, key: str) -> pa.Table:
    seen: set[Any] = set()
    keep = []
    for value in table.column(key).to_pylist():
        keep.append(value not in seen)
        seen.add(value)
    return table.filter(pa.array(keep)) if not all(keep) else table


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(changed) or "parameters differ"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
