"""The results store's layout: the tables this camzoo writes, and which layout a file already holds.

Why apart from the store: the store reads and writes cells; this module decides, before anything is
written, whether a file is a store this camzoo can use. A file is judged by what it holds, not only by
its ``meta`` row: a store with schema-1 tables and no ``meta`` table used to get one made and stamped
with the current schema, and a resumed bench then died on its first write.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 2  # 2: no config_hash column (it only repeated run_id)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    provenance TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL, kind TEXT NOT NULL,
    variant TEXT NOT NULL, seed INTEGER NOT NULL, method TEXT NOT NULL,
    device TEXT NOT NULL, finished_at TEXT NOT NULL, worker TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, dataset, backbone, kind, variant, seed, method)
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL, kind TEXT NOT NULL,
    variant TEXT NOT NULL, seed INTEGER NOT NULL, method TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, per_image BLOB,
    code_version TEXT NOT NULL, device TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, dataset, backbone, kind, variant, seed, method, metric)
);
CREATE TABLE IF NOT EXISTS arrays (
    run_id TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL, kind TEXT NOT NULL,
    variant TEXT NOT NULL, seed INTEGER NOT NULL, method TEXT NOT NULL, name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, dataset, backbone, kind, variant, seed, method, name)
);
"""

# Columns a table may lack in a store of the current schema: the store adds them when it opens one
# for writing (stores from before per-cell workers).
ADDED_COLUMNS = {"cells": {"worker"}}
# What tells an older schema's tables apart, by the columns it had that the current one dropped.
OLDER_SCHEMAS = {1: {"results": {"config_hash"}}}
_NEW_STORE = "rerun the benchmark into a new --out directory"


class StoreLayoutError(ValueError):
    """A file that is not a store of the schema this camzoo reads: one line saying what it is and
    what to do. A ValueError, so the CLI prints it as one line."""


@functools.lru_cache(maxsize=1)
def current_columns() -> dict[str, frozenset[str]]:
    """{table: its columns} of the current schema, read from SCHEMA itself (an in-memory database),
    so the layout check can never disagree with what the store creates."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.executescript(SCHEMA)
        return tables(db)


def tables(connection: sqlite3.Connection) -> dict[str, frozenset[str]]:
    """{table: its columns} of every table the file holds (SQLite's own tables aside)."""
    names = [row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    return {name: frozenset(row[1] for row in connection.execute(f'PRAGMA table_info("{name}")')) for name in names}


def _schema_of(held: dict[str, frozenset[str]]) -> int | None:
    """The schema whose tables ``held`` are (an older one, by the columns it alone had), None if none."""
    current = current_columns()
    for version, marks in OLDER_SCHEMAS.items():
        if all(columns <= held.get(table, frozenset()) for table, columns in marks.items()):
            return version
    if all(current[table] - ADDED_COLUMNS.get(table, set()) <= columns <= current[table]
           for table, columns in held.items() if table in current):
        return SCHEMA_VERSION
    return None


def _declared(connection: sqlite3.Connection, path: Path) -> int | None:
    """The meta table's ``schema_version`` as a whole number; None where the file has none."""
    row = connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        return None
    text = str(row[0]).strip()
    if not text.isdigit():
        raise StoreLayoutError(
            f"{path} declares store schema_version {row[0]!r}, which is not a schema camzoo writes (whole numbers; "
            f"this camzoo reads {SCHEMA_VERSION}): it was not written by camzoo, or was edited; {_NEW_STORE}")
    return int(text)


def check_layout(connection: sqlite3.Connection, path: Path) -> bool:
    """Raise StoreLayoutError unless the file is a store of the current schema, or empty. Returns
    whether it is empty (then the caller creates the schema). Reads only: safe on a read-only store."""
    held = tables(connection)
    if not held:
        return True
    current = current_columns()
    if not set(held) & set(current):
        raise StoreLayoutError(
            f"{path} is an SQLite database of other tables ({', '.join(sorted(held)[:5])}), not a camzoo results "
            "store: give the benchmark an --out directory of its own")
    declared = _declared(connection, path) if "meta" in held else None
    found = _schema_of(held)
    version = declared if declared is not None else found
    if version is not None and version > SCHEMA_VERSION:
        raise StoreLayoutError(
            f"{path} is a results store of schema {version}, written by a newer camzoo; this camzoo reads schema "
            f"{SCHEMA_VERSION}: upgrade camzoo (pip install -U camzoo) to resume or report it, or {_NEW_STORE}")
    if version is not None and version < SCHEMA_VERSION:
        how = "" if declared is not None else f" (its tables are schema {version}'s; it has no schema_version)"
        raise StoreLayoutError(
            f"{path} is a results store of schema {version}, written by an older camzoo{how}; this camzoo reads "
            f"schema {SCHEMA_VERSION} and cannot resume or report it: {_NEW_STORE} (the camzoo that wrote it "
            "still reports it)")
    if found != SCHEMA_VERSION:
        odd = sorted(f"{table}({', '.join(sorted(columns ^ current[table]))})"
                     for table, columns in held.items() if table in current and columns != current[table])
        said = f"declares schema {declared} but" if declared is not None else "has no schema_version and"
        raise StoreLayoutError(
            f"{path} {said} its tables differ from every store schema camzoo knows (columns that differ: "
            f"{'; '.join(odd)}): it was not written by camzoo, or was edited; {_NEW_STORE}")
    return False
