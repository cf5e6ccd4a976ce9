"""The results store: atomic cells, safe concurrent writers, safe blobs, clear errors."""

from __future__ import annotations

import multiprocessing
import sqlite3

import numpy as np
import pytest

from camzoo.bench.store import CellKey, ResultsStore, decode_array, encode_array

PROVENANCE = {"config_hash": "run", "code_version": "test", "device": "cpu"}


def write_cells(directory: str, worker: int, count: int) -> None:
    with ResultsStore(directory) as store:
        for i in range(count):
            key = CellKey("shapes", "resnet8", "lfi", "default", i, f"method{worker}")
            store.write_cell("run", key, {"deletion": (0.1 * i, np.full(4, i, np.float32)), "insertion": (0.5, None)},
                             {"maps": np.zeros((2, 3, 3), np.float16)}, **PROVENANCE)


def test_two_processes_write_one_store_without_losing_or_duplicating(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_cells, args=(str(tmp_path), w, 40)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    with ResultsStore(tmp_path) as store:
        assert len(store.cells("run")) == 80
        rows = store.results("run", with_per_image=True)
        assert len(rows) == 160
        assert {tuple(r["per_image"]) for r in rows if r["metric"] == "deletion" and r["seed"] == 7} == {(7.0,) * 4}
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


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
