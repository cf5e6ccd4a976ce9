"""camzoo.bench.load: a store as DataFrames that give back every number of summary.csv."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import camzoo.bench
from camzoo.bench.summary import table_columns
from camzoo.cli import main


@pytest.fixture(scope="module")
def run_dir(tiny_bench_run) -> Path:
    return tiny_bench_run


def test_load_round_trips_every_number_of_summary_csv(run_dir):
    results = camzoo.bench.load(run_dir)
    csv = pd.read_csv(run_dir / "summary.csv")
    assert results.config["seeds"] == [0, 1] and results.provenance["run_id"] == results.run_id

    # the summary frame, by the report's own code, equals summary.csv in every column
    summary = results.summary()
    assert list(summary.columns) == list(csv.columns) and len(summary) == len(csv) == 7
    for column in csv:
        if pd.api.types.is_numeric_dtype(csv[column]) and not pd.api.types.is_bool_dtype(csv[column]):
            np.testing.assert_allclose(summary[column].astype(float), csv[column], rtol=1e-12, atol=1e-12, err_msg=column)
        else:
            assert summary[column].tolist() == csv[column].tolist(), column

    # and the means and stds re-derive from the loader's tables alone
    cells, long = results.cells, results.long
    checked = 0
    for column in table_columns():
        if f"{column.metric}_mean" not in csv or csv[f"{column.metric}_mean"].isna().all():
            continue
        for _, row in csv.iterrows():
            if column.source == "stability":
                mine = cells[(cells.kind == row.kind) & (cells.method == row.method) & (cells.metric == column.metric)]
                pairs = long[(long.kind == row.kind) & (long.method == row.method) & (long.metric == column.metric)]
                std = pairs.groupby("pair")["value"].mean().std(ddof=1)
            else:
                method = "model" if column.source == "model" else row.method
                mine = cells[(cells.kind == row.kind) & (cells.method == method) & (cells.metric == column.metric)]
                std = mine["value"].std(ddof=1)
            if mine.empty:
                assert np.isnan(row[f"{column.metric}_mean"])
                continue
            assert mine["value"].mean() == pytest.approx(row[f"{column.metric}_mean"], rel=1e-12), \
                (row.kind, row.method, column.metric)
            assert std == pytest.approx(row[f"{column.metric}_std"], rel=1e-9, nan_ok=True), (row.kind, row.method, column.metric)
            checked += 1
    assert checked > 7 * 8

    # the long table holds every per-image number: means over images give back the cells' values
    per_image = long[long["pair"].isna()].groupby(["kind", "seed", "method", "metric"])["value"].mean()
    stored = cells.set_index(["kind", "seed", "method", "metric"])["value"]
    for metric in ("deletion", "insertion", "pointing_game", "energy_pointing_game_mask", "srg_zeros", "top1"):
        mine = per_image.xs(metric, level="metric")
        assert len(mine) > 0
        np.testing.assert_allclose(mine, stored.xs(metric, level="metric").loc[mine.index], rtol=1e-6, err_msg=metric)
    deletion = long[(long.metric == "deletion") & (long.kind == "lfi") & (long.method == "attention") & (long.seed == 0)]
    assert deletion["image"].tolist() == list(range(8))
    assert set(long.loc[long.metric == "stability_iou", "pair"]) == {0}
    # curves: averaged over images, x = the share of pixels changed (all of them in this config)
    curve = results.curves[(results.curves.metric == "deletion_curve") & (results.curves.method == "gradcam")]
    assert len(curve) == 2 * 2 * 5 and curve["fraction"].max() == 1.0 and curve["value"].between(0, 1).all()


def test_report_format_csv_writes_the_long_table(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "*.csv", "*.gz", "*.md", "*.tex", "*.html"))
    done = CliRunner().invoke(main, ["report", str(copy), "--format", "csv"])
    assert done.exit_code == 0, done.output
    assert (copy / "summary.csv").is_file() and (copy / "pairwise.csv").is_file()
    assert not (copy / "summary.md").exists() and not (copy / "summary.tex").exists() and not (copy / "report.html").exists()
    with gzip.open(copy / "long.csv.gz", "rt") as handle:
        written = pd.read_csv(handle)
    loaded = camzoo.bench.load(copy).long
    assert list(written.columns) == ["dataset", "backbone", "kind", "variant", "seed", "method", "metric", "pair",
                                     "image", "value"]
    assert len(written) == len(loaded) and np.allclose(written["value"], loaded["value"], equal_nan=True)


def test_load_says_what_is_wrong(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="no results store"):
        camzoo.bench.load(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()  # a wrong path never creates a store
    with pytest.raises(ValueError, match="no run 'nope'.*runs: "):
        camzoo.bench.load(run_dir, run="nope")
    bad = CliRunner().invoke(main, ["report", str(run_dir), "--format", "xls"])
    assert bad.exit_code == 2 and "xls" in bad.output
