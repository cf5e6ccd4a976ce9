"""Which layout a results store holds (camzoo.bench.store_schema): a store of an older, newer or unknown
layout is refused in one line that says what it is and what to do, and is left as it was."""

from __future__ import annotations

import errno
import hashlib
import sqlite3
from pathlib import Path

import pytest

from camzoo.bench import store as store_module
from camzoo.bench.store import CellKey, ResultsStore, StoreLayoutError
from camzoo.bench.store_schema import SCHEMA_VERSION
from helpers import cli, tiny_config

# What the first camzoo stores held (store schema 1): results kept a config_hash, cells had no worker.
SCHEMA_1 = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, config TEXT NOT NULL, provenance TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE cells (run_id TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL, kind TEXT NOT NULL,
    variant TEXT NOT NULL, seed INTEGER NOT NULL, method TEXT NOT NULL, device TEXT NOT NULL, finished_at TEXT NOT NULL,
    PRIMARY KEY (run_id, dataset, backbone, kind, variant, seed, method));
CREATE TABLE results (run_id TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL, kind TEXT NOT NULL,
    variant TEXT NOT NULL, seed INTEGER NOT NULL, method TEXT NOT NULL, metric TEXT NOT NULL, value REAL, per_image BLOB,
    config_hash TEXT NOT NULL, code_version TEXT NOT NULL, device TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, dataset, backbone, kind, variant, seed, method, metric));
CREATE TABLE arrays (run_id TEXT NOT NULL, dataset TEXT NOT NULL, backbone TEXT NOT NULL, kind TEXT NOT NULL,
    variant TEXT NOT NULL, seed INTEGER NOT NULL, method TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, dataset, backbone, kind, variant, seed, method, name));
INSERT INTO runs VALUES ('r1', '{}', '{}', '2025-01-01T00:00:00');
INSERT INTO cells VALUES ('r1', 'shapes', 'resnet8', 'baseline', 'default', 0, 'gradcam', 'cpu', '2025-01-01T00:00:01');
INSERT INTO results VALUES ('r1', 'shapes', 'resnet8', 'baseline', 'default', 0, 'gradcam', 'deletion', 0.25, NULL,
    'r1', 'old', 'cpu', '2025-01-01T00:00:01');
"""
KEY = CellKey("shapes", "resnet8", "baseline", "default", 1, "gradcam")


def older_store(directory: Path, meta_version: str | None = None) -> Path:
    """A schema-1 store in ``directory``; with a meta table declaring ``meta_version`` if one is given."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
        if meta_version is not None:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (meta_version,))
    return path


def current_store(directory: Path, version: str | None = str(SCHEMA_VERSION)) -> Path:
    """A store this camzoo wrote, one cell in it, its schema_version then set to ``version`` (None: removed)."""
    with ResultsStore(directory) as store:
        store.record_run("r1", {}, {})
        store.write_cell("r1", KEY, {"deletion": (0.5, None)}, code_version="t", device="cpu")
    with sqlite3.connect(directory / "results.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key='schema_version'")
        if version is not None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (version,))
    return directory / "results.sqlite"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_refusal(directory: Path, *words: str) -> str:
    """Open the store in ``directory``: it must be refused in one line holding ``words``, the file unchanged."""
    path = directory / "results.sqlite"
    before = digest(path)
    with pytest.raises(StoreLayoutError) as caught:
        ResultsStore(directory)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "invalid literal" not in message, message
    for word in words:
        assert word in message, message
    assert digest(path) == before, "a refused store was written to"
    return message


def test_schema_1_tables_without_a_meta_table_are_an_older_store_not_schema_2(tmp_path):
    older_store(tmp_path)
    one_line_refusal(tmp_path, "schema 1", "older camzoo", "no schema_version", "new --out")
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "meta" not in tables, "the older store was stamped with this camzoo's schema"


def test_a_declared_older_or_newer_schema_says_which_camzoo_wrote_it(tmp_path):
    older_store(tmp_path / "old", meta_version="1")
    one_line_refusal(tmp_path / "old", "schema 1", "older camzoo", "new --out")
    current_store(tmp_path / "new", version=str(SCHEMA_VERSION + 1))
    one_line_refusal(tmp_path / "new", f"schema {SCHEMA_VERSION + 1}", "newer camzoo", "upgrade camzoo")


@pytest.mark.parametrize("version", ["2.1", "two", "", "-2"])
def test_a_schema_version_that_is_not_a_whole_number_is_named(tmp_path, version):
    current_store(tmp_path, version=version)
    one_line_refusal(tmp_path, f"schema_version {version!r}", "not a schema camzoo writes", "new --out")


def test_tables_that_match_no_schema_are_refused_naming_the_columns(tmp_path):
    path = current_store(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE results ADD COLUMN colour TEXT")
    one_line_refusal(tmp_path, "declares schema 2 but", "results(colour)")
    (tmp_path / "other").mkdir()
    with sqlite3.connect(tmp_path / "other" / "results.sqlite") as db:
        db.execute("CREATE TABLE photos (name TEXT)")
    one_line_refusal(tmp_path / "other", "other tables (photos)", "not a camzoo results store")


def test_a_current_store_without_its_schema_row_still_opens_and_keeps_its_cells(tmp_path):
    current_store(tmp_path, version=None)
    with ResultsStore(tmp_path) as store:
        assert store.is_done("r1", KEY) and store.results("r1")[0]["value"] == 0.5
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_a_store_from_before_per_cell_workers_is_the_current_schema_and_gains_the_column(tmp_path):
    path = current_store(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE cells DROP COLUMN worker")
    with ResultsStore(tmp_path) as store:
        assert store.workers("r1") == {KEY: ""}


def test_a_read_only_older_store_gets_the_same_line(tmp_path, monkeypatch):
    older_store(tmp_path)
    monkeypatch.setattr(store_module, "write_problem",
                        lambda d, p: OSError(errno.EROFS, "Read-only file system", str(p)))
    one_line_refusal(tmp_path, "schema 1", "older camzoo")


def test_bench_and_report_into_an_older_store_say_one_line(tmp_path):
    """What the user saw: a resumed bench died with sqlite3.OperationalError on its first write."""
    out = tmp_path / "out"
    older_store(out)
    for args in (["bench", "--config", tiny_config(tmp_path), "--out", out, "--no-progress"], ["report", out]):
        result = cli(*args)
        error = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code != 0 and len(error) == 1 and "schema 1" in error[0], result.output
        assert "OperationalError" not in result.output and "Traceback" not in result.output
        assert "rerun to resume" not in result.output  # resuming into it cannot help
    assert not (out / "models").exists(), "the bench trained before it read the store"
