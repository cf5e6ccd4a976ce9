"""The benchmark's results store: one SQLite file, one transaction per finished cell.

Why SQLite: a crash or Ctrl-C can only lose the cell being computed (each cell commits on its own),
a rerun asks the store what is finished, two processes can write to one store safely (WAL mode,
immediate transactions, primary keys), and `camzoo report` rebuilds every table and plot from this
file alone. Per-image values and maps are kept as ``.npy`` blobs (loaded with allow_pickle=False),
so new aggregations and paired tests never need a rerun. A store in a read-only place is opened
read-only (reading and reporting work; a write says the place is read-only); ``camzoo.bench.lock``
makes a second ``camzoo bench`` on one directory wait for the first instead of redoing its work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote

import numpy as np

from .encoding import canonical_names, decode_array, encode_array
from .store_schema import SCHEMA, SCHEMA_VERSION, StoreLayoutError, check_layout

STORE_NAME = "results.sqlite"

# seed value of cells that span all seeds (cross-seed stability)
ALL_SEEDS = -1
_KEY_COLUMNS = "run_id, dataset, backbone, kind, variant, seed, method"
_CELL_COLUMNS = _KEY_COLUMNS + ", device, finished_at, worker"


@dataclass(frozen=True)
class CellKey:
    """Coordinates of one benchmark cell; ``method`` is "model" for model-level metrics (accuracy)."""

    dataset: str
    backbone: str
    kind: str
    variant: str
    seed: int
    method: str

    def as_tuple(self) -> tuple:
        return (self.dataset, self.backbone, self.kind, self.variant, self.seed, self.method)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StoreBusyError(ValueError):
    """Another process kept the store locked for longer than the timeout. Not corruption: the file
    is fine, and opening it again once the other process is done works. A ValueError, so callers
    that report ValueErrors as one line do so for this too."""


def _is_busy(err: sqlite3.Error) -> bool:
    """SQLite's SQLITE_BUSY / SQLITE_LOCKED ("database is locked", "database table is locked", ...)."""
    return isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err))


def write_problem(directory: Path, path: Path) -> OSError | None:
    """Why this process cannot write the store ``path`` in ``directory`` (read-only file system, no
    permission), as an OSError naming the place; None when it can. Tried, not guessed from mode bits
    (root ignores them, a read-only mount does not show in them)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    except OSError as err:
        code = err.errno if err.errno is not None else errno.EACCES
        return type(err)(code, f"{os.strerror(code)}: the results store there can be read and reported "
                               "(camzoo report DIR --out ELSEWHERE), not written", str(path))
    return None


class ResultsStore:
    """Read and write one benchmark directory's ``results.sqlite``.

    Several processes may open (and create) one store at the same moment: SQLite can answer
    "database is locked" while another connection switches the file to WAL or creates the schema,
    sometimes without waiting on its busy timeout, so opening retries with backoff for up to
    ``timeout`` seconds, and reports a store still locked after that as busy, never as corrupt.
    """

    def __init__(self, directory: str | Path, timeout: float = 60.0, name: str = STORE_NAME):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / name
        self.timeout = float(timeout)
        self.read_only_reason = write_problem(self.directory, self.path)
        if self.read_only_reason is not None:
            if not self.path.is_file():
                raise self.read_only_reason
            self._connection = self._open_read_only()
        else:
            self._connection = self._open_with_retries()

    @property
    def read_only(self) -> bool:
        """Whether the store lies in a place this process cannot write (it is then only read)."""
        return self.read_only_reason is not None

    def _open_with_retries(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return self._open()
            except sqlite3.Error as err:
                if not _is_busy(err):
                    raise ValueError(f"{self.path} is not a camzoo results store (or it is corrupt): {err}") from err
                if time.monotonic() + delay > deadline:
                    raise StoreBusyError(
                        f"{self.path} stayed locked by another process for {self.timeout:g} s ({err}); the store is "
                        "not damaged: retry when the other run has finished") from err
                time.sleep(delay * (1.0 + random.random()))  # jitter, so racing openers fall out of step
                delay = min(delay * 2.0, 0.25)

    def _open_read_only(self) -> sqlite3.Connection:
        """Open without writing anything next to the file: ``mode=ro``, else (a WAL store whose ``-shm``
        file cannot be created) ``immutable=1``, which is safe because nobody can write here either.
        Its layout is checked as for writing (store_schema); an empty file cannot be made a store here."""
        uri = "file:" + quote(str(self.path.resolve()))
        last: sqlite3.Error | None = None
        for flags in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                connection = sqlite3.connect(uri + flags, uri=True, timeout=self.timeout, isolation_level=None)
                try:
                    if check_layout(connection, self.path):
                        raise StoreLayoutError(f"{self.path} is empty, not a results store, and cannot be written "
                                               f"here ({self.read_only_reason})")
                    return connection
                except BaseException:
                    connection.close()
                    raise
            except sqlite3.Error as err:
                last = err
        raise ValueError(f"{self.path} is not a camzoo results store (or it is corrupt): {last} (opened read-only: "
                         f"{self.read_only_reason})")

    def _open(self) -> sqlite3.Connection:
        """One attempt: connect, switch to WAL (only if not already), check the layout the file holds
        (store_schema.check_layout: an older, newer or foreign one is refused before anything is
        written), create what a new store lacks."""
        connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            connection.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            check_layout(connection, self.path)  # before WAL: a file that is refused is left as it was
            if str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                check_layout(connection, self.path)  # again: another process may have written it meanwhile
                for statement in filter(str.strip, SCHEMA.split(";")):
                    connection.execute(statement)
                columns = {row[1] for row in connection.execute("PRAGMA table_info(cells)")}
                if "worker" not in columns:  # a store from before per-cell workers: same schema otherwise
                    connection.execute("ALTER TABLE cells ADD COLUMN worker TEXT NOT NULL DEFAULT ''")
                connection.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: all of the block lands, or none of it."""
        if self.read_only_reason is not None:
            raise self.read_only_reason
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    # --- runs ---------------------------------------------------------------------------------
    def record_run(self, run_id: str, config: Mapping[str, Any], provenance: Mapping[str, Any],
                   planned: Iterable[CellKey] | None = None) -> None:
        """Store a run (its first config and provenance stay) as the latest started (``camzoo report``
        shows it), with the cells it plans (``planned``: a report says which are missing)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?)",
                (run_id, json.dumps(config, sort_keys=True), json.dumps(provenance, sort_keys=True), _now()),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('latest_run', ?)", (f"{time.time():.6f} {run_id}",))
            if planned is not None:
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                           (f"planned:{run_id}", json.dumps([key.as_tuple() for key in planned])))

    def latest_run_id(self) -> str | None:
        """The run a bench started last (in an older store: the newest run); None in an empty store."""
        found = self._connection.execute("SELECT value FROM meta WHERE key='latest_run'").fetchone()
        if found is not None:
            run_id = found[0].split(" ", 1)[-1]
            if self._connection.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone():
                return run_id
        row = self._connection.execute("SELECT run_id FROM runs ORDER BY created_at DESC, rowid DESC").fetchone()
        return None if row is None else row[0]

    def planned_cells(self, run_id: str) -> list[CellKey] | None:
        """The cells the run plans (record_run's ``planned``); None where it was not recorded."""
        found = self._connection.execute("SELECT value FROM meta WHERE key=?", (f"planned:{run_id}",)).fetchone()
        return None if found is None else [CellKey(*key) for key in json.loads(found[0])]

    def runs(self) -> list[dict[str, Any]]:
        rows = self._connection.execute(
            "SELECT run_id, config, provenance, created_at FROM runs ORDER BY created_at, rowid")
        return [
            {"run_id": r[0], "config": json.loads(r[1]), "provenance": json.loads(r[2]), "created_at": r[3]}
            for r in rows
        ]

    # --- cells --------------------------------------------------------------------------------
    def is_done(self, run_id: str, key: CellKey) -> bool:
        row = self._connection.execute(
            "SELECT 1 FROM cells WHERE run_id=? AND dataset=? AND backbone=? AND kind=? AND variant=? "
            "AND seed=? AND method=?",
            (run_id, *key.as_tuple()),
        ).fetchone()
        return row is not None

    def write_cell(
        self,
        run_id: str,
        key: CellKey,
        metrics: Mapping[str, tuple[float | None, np.ndarray | None]],
        arrays: Mapping[str, np.ndarray] | None = None,
        *,
        code_version: str,
        device: str,
        worker: str = "",
    ) -> None:
        """Commit a finished cell: its metric rows, its arrays and its done-marker, in one transaction.
        ``worker`` ("host:rank") says which process computed it, so a store shows how work was spread."""
        now = _now()
        with self.transaction() as db:
            for metric, (value, per_image) in metrics.items():
                db.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, *key.as_tuple(), metric, None if value is None else float(value),
                     encode_array(per_image), code_version, device, now),
                )
            for name, array in (arrays or {}).items():
                db.execute(
                    "INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, *key.as_tuple(), name, encode_array(array)),
                )
            db.execute(
                f"INSERT OR REPLACE INTO cells ({_CELL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, *key.as_tuple(), device, now, worker),
            )

    def cells(self, run_id: str | None = None) -> list[CellKey]:
        query = "SELECT dataset, backbone, kind, variant, seed, method FROM cells"
        rows = self._connection.execute(query + (" WHERE run_id=?" if run_id else ""), (run_id,) if run_id else ())
        return [CellKey(*row) for row in rows]

    def workers(self, run_id: str) -> dict[CellKey, str]:
        """Which process ("host:rank") computed each cell of a run ("" in stores older than the column)."""
        rows = self._connection.execute(
            "SELECT dataset, backbone, kind, variant, seed, method, worker FROM cells WHERE run_id=?", (run_id,))
        return {CellKey(*row[:6]): row[6] for row in rows}

    def finish_times(self, run_id: str) -> dict[CellKey, str]:
        """When each cell of a run was committed (ISO 8601, seconds), in that order: what a run's
        time was spent on (benchmarks/verdict_cost.py)."""
        rows = self._connection.execute(
            "SELECT dataset, backbone, kind, variant, seed, method, finished_at FROM cells WHERE run_id=? "
            "ORDER BY finished_at, rowid", (run_id,))
        return {CellKey(*row[:6]): row[6] for row in rows}

    def merge_from(self, path: str | Path) -> int:
        """Copy into this store every cell of another store (a rank's shard) that this one lacks, with
        its results and arrays, in one transaction; cells already here are left alone (exactly once:
        merging twice, or a shard and a rerun that both hold a cell, never duplicates it).
        Returns the number of cells copied."""
        db = self._connection
        db.execute("ATTACH DATABASE ? AS shard", (str(path),))
        try:
            columns = [row[1] for row in db.execute("PRAGMA shard.table_info(cells)")]
            if "worker" not in columns:
                raise ValueError(f"{path} is not a camzoo results store with cells")
            with self.transaction():
                db.execute("INSERT OR IGNORE INTO main.runs SELECT * FROM shard.runs")
                db.execute("INSERT OR IGNORE INTO main.meta SELECT * FROM shard.meta WHERE key LIKE 'planned:%'")
                latest = [row[0] for row in db.execute(
                    "SELECT value FROM main.meta WHERE key='latest_run' UNION ALL "
                    "SELECT value FROM shard.meta WHERE key='latest_run'")]
                if latest:  # the later start of the two ("<unix time> <run id>")
                    db.execute("INSERT OR REPLACE INTO main.meta VALUES ('latest_run', ?)",
                               (max(latest, key=lambda value: float(value.split(" ", 1)[0])),))
                db.execute("DROP TABLE IF EXISTS temp.fresh")
                db.execute(
                    f"CREATE TEMP TABLE fresh AS SELECT {_CELL_COLUMNS} FROM shard.cells AS s WHERE NOT EXISTS "
                    "(SELECT 1 FROM main.cells AS m WHERE " +
                    " AND ".join(f"m.{c} = s.{c}" for c in _KEY_COLUMNS.split(", ")) + ")")
                joined = " AND ".join(f"t.{c} = f.{c}" for c in _KEY_COLUMNS.split(", "))
                for table in ("results", "arrays"):
                    db.execute(f"INSERT OR REPLACE INTO main.{table} SELECT t.* FROM shard.{table} AS t "
                               f"JOIN temp.fresh AS f ON {joined}")
                db.execute(f"INSERT INTO main.cells ({_CELL_COLUMNS}) SELECT {_CELL_COLUMNS} FROM temp.fresh")
                copied = db.execute("SELECT COUNT(*) FROM temp.fresh").fetchone()[0]
                db.execute("DROP TABLE temp.fresh")
        finally:
            db.execute("DETACH DATABASE shard")
        return int(copied)

    # --- reading ------------------------------------------------------------------------------
    def results(self, run_id: str | None = None, with_per_image: bool = False) -> list[dict[str, Any]]:
        columns = "run_id, dataset, backbone, kind, variant, seed, method, metric, value, code_version, device, created_at"
        if with_per_image:
            columns += ", per_image"
        query = f"SELECT {columns} FROM results" + (" WHERE run_id=?" if run_id else "")
        cursor = self._connection.execute(query, (run_id,) if run_id else ())
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor]
        canonical = canonical_names()
        for row in rows:  # a method, kind or metric stored under an old name reports under its new one
            for field in ("method", "kind", "metric"):
                row[field] = canonical[field](row[field])
            if with_per_image:
                row["per_image"] = decode_array(row["per_image"])
        return rows

    def array(self, run_id: str, key: CellKey, name: str) -> np.ndarray | None:
        row = self._connection.execute(
            "SELECT data FROM arrays WHERE run_id=? AND dataset=? AND backbone=? AND kind=? AND variant=? "
            "AND seed=? AND method=? AND name=?",
            (run_id, *key.as_tuple(), name),
        ).fetchone()
        return None if row is None else decode_array(row[0])

    def arrays(self, run_id: str, name: str, **where: Any) -> Iterable[tuple[CellKey, np.ndarray]]:
        """Every array called ``name`` in a run, optionally filtered by cell fields (dataset=..., kind=...)."""
        fields = set(CellKey.__dataclass_fields__)
        unknown = set(where) - fields
        if unknown:
            raise ValueError(f"unknown cell field(s) {sorted(unknown)}; valid: {sorted(fields)}")
        conditions = "".join(f" AND {field}=?" for field in where)
        rows = self._connection.execute(
            "SELECT dataset, backbone, kind, variant, seed, method, data FROM arrays WHERE run_id=? AND name=?"
            f"{conditions} ORDER BY dataset, backbone, kind, method, variant, seed",
            (run_id, name, *where.values()),
        )
        for row in rows:
            yield CellKey(*row[:6]), decode_array(row[6])
