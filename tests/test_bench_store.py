"""The results store: atomic cells, safe concurrent writers, safe blobs, clear errors."""

from __future__ import annotations

import multiprocessing
import sqlite3

import numpy as np
import pytest

from camzoo.bench.store import CellKey, ResultsStore, StoreBusyError, decode_array, encode_array

PROVENANCE = {"code_version": "test", "device": "cpu"}


def ended(processes: list) -> None:
    """Kill and reap the started ones of ``processes`` (multiprocessing.Process) still running."""
    for process in processes:
        if process.pid is not None and process.exitcode is None:
            process.kill()
            process.join()


def write_cells(directory: str, worker: int, count: int, start=None) -> None:
    if start is not None:
        start.wait()  # open at the same moment as the other process: the race that used to fail
    with ResultsStore(directory) as store:
        for i in range(count):
            key = CellKey("shapes", "resnet8", "lfi", "default", i, f"method{worker}")
            store.write_cell("run", key, {"deletion": (0.1 * i, np.full(4, i, np.float32)), "insertion": (0.5, None)},
                             {"maps": np.zeros((2, 3, 3), np.float16)}, **PROVENANCE)


def test_two_processes_write_one_store_without_losing_or_duplicating(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=write_cells, args=(str(tmp_path), w, 40, start)) for w in range(2)]
    try:
        for process in workers:
            process.start()
        for process in workers:
            process.join(120)
            assert process.exitcode == 0
    finally:  # none outlives the test, pass or fail (a worker stuck on a lock would)
        ended(workers)
    with ResultsStore(tmp_path) as store:
        assert len(store.cells("run")) == 80
        rows = store.results("run", with_per_image=True)
        assert len(rows) == 160
        assert {tuple(r["per_image"]) for r in rows if r["metric"] == "deletion" and r["seed"] == 7} == {(7.0,) * 4}
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def open_fresh_stores(directories: list[str], worker: int, start) -> None:
    """Open (and so create) each new store at the same moment as the other workers, write one cell."""
    for directory in directories:
        start.wait(60)
        with ResultsStore(directory) as store:
            store.write_cell("run", CellKey("shapes", "resnet8", "lfi", "default", 0, f"m{worker}"),
                             {"deletion": (0.5, None)}, **PROVENANCE)


def test_many_processes_creating_one_store_at_once_all_succeed(tmp_path):
    """Opening a new store from several processes at the same instant used to fail ~2 % of the
    time with "database is locked" at PRAGMA journal_mode=WAL, reported as a corrupt store. Four
    workers race on 40 fresh stores (160 simultaneous opens): every one must succeed."""
    context = multiprocessing.get_context("spawn")
    directories = [str(tmp_path / f"store{i}") for i in range(40)]
    start = context.Barrier(4)
    workers = [context.Process(target=open_fresh_stores, args=(directories, w, start)) for w in range(4)]
    try:
        for process in workers:
            process.start()
        for process in workers:
            process.join(240)
            assert process.exitcode == 0, "a worker failed to open or write a store (see its stderr above)"
    finally:
        ended(workers)
    for directory in directories:
        with ResultsStore(directory) as store:
            assert sorted(key.method for key in store.cells("run")) == ["m0", "m1", "m2", "m3"]


def test_a_store_locked_too_long_is_reported_as_busy_not_corrupt(tmp_path):
    ResultsStore(tmp_path).close()
    holder = sqlite3.connect(tmp_path / "results.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreBusyError, match="stayed locked by another process for 0.3 s") as info:
            ResultsStore(tmp_path, timeout=0.3)
        assert "corrupt" not in str(info.value) and "not damaged" in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ResultsStore(tmp_path).close()  # free again: opens at once


def test_a_failed_cell_leaves_nothing_behind(tmp_path):
    key = CellKey("shapes", "resnet8", "abn", "default", 0, "gradcam")
    with ResultsStore(tmp_path) as store:
        with pytest.raises(TypeError):
            store.write_cell("run", key, {"deletion": (0.1, None), "broken": (object(), None)}, **PROVENANCE)
        assert not store.is_done("run", key)
        assert store.results("run") == []


def test_rewriting_a_cell_replaces_it(tmp_path):
    key = CellKey("shapes", "resnet8", "abn", "default", 0, "gradcam")
    with ResultsStore(tmp_path) as store:
        store.write_cell("run", key, {"deletion": (0.1, None)}, **PROVENANCE)
        store.write_cell("run", key, {"deletion": (0.2, None)}, **PROVENANCE)
        (row,) = store.results("run")
        assert row["value"] == pytest.approx(0.2) and store.is_done("run", key)


def test_blobs_round_trip_and_refuse_pickles():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(decode_array(encode_array(array)), array)
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"code": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        decode_array(buffer.getvalue())  # an object array is what a malicious blob would hold


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ValueError, match="not a camzoo results store"):
        ResultsStore(tmp_path)


def test_unknown_filter_fields_are_refused(tmp_path):
    with ResultsStore(tmp_path) as store:
        with pytest.raises(ValueError, match="unknown cell field"):
            list(store.arrays("run", "maps", colour="red"))
