"""A results store in a read-only place (camzoo.bench.store): it is read, and writing to it, by the store
or by ``camzoo report``, says "read-only" and where to write instead (issue 24).

Why simulated: root ignores chmod, so the store's write probe is made to answer what a read-only
mount answers."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from click.testing import CliRunner

import camzoo
from camzoo.cli import main


def read_only(monkeypatch) -> None:
    """What a read-only mount answers to the store's write probe (root ignores chmod, so it is simulated)."""
    import camzoo.bench.store as store_module

    monkeypatch.setattr(store_module, "write_problem", lambda directory, path: OSError(
        errno.EROFS, f"{os.strerror(errno.EROFS)}: read it (camzoo report DIR --out ELSEWHERE), not written", str(path)))


def test_a_store_in_a_read_only_place_is_read_and_writing_says_read_only(tmp_path, monkeypatch):
    from camzoo.bench.store import CellKey, ResultsStore

    with ResultsStore(tmp_path) as store:
        store.record_run("r1", {"preset": "x"}, {})
        store.write_cell("r1", CellKey("d", "b", "k", "v", 0, "gradcam"), {"m": (0.25, np.arange(3.0))},
                         code_version="t", device="cpu")
    read_only(monkeypatch)
    with ResultsStore(tmp_path) as store:
        assert store.read_only and [r["value"] for r in store.results("r1")] == [0.25]
        with pytest.raises(OSError, match="Read-only") as caught:
            store.record_run("r2", {}, {})
        assert caught.value.errno == errno.EROFS
    with pytest.raises(OSError, match="Read-only"):
        ResultsStore(tmp_path / "new")  # nothing to read, and nothing may be created


def test_camzoo_report_of_a_read_only_store_says_so_and_writes_elsewhere_with_out(tiny_bench_run, tmp_path_factory,
                                                                                  monkeypatch):
    run = tiny_bench_run
    read_only(monkeypatch)
    refused = CliRunner().invoke(main, ["report", str(run)])
    assert refused.exit_code == 1 and "read-only" in refused.output.lower() and "--out" in refused.output
    assert "not a camzoo results store" not in refused.output
    elsewhere = tmp_path_factory.mktemp("tables")
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(elsewhere), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert (elsewhere / "summary.csv").read_text() == (run / "summary.csv").read_text()
    assert len(camzoo.bench.load(run).long) > 0
