"""camzoo.bench.record: one typed record of a stored run, read once, is what every report path reads.

Checked here: a store written before newer [eval] keys existed reports the same numbers (its record
fills them from EvalSettings' defaults); the config's scoring defaults are EvalSettings' own and leave
every preset's run id unchanged; the protocol notes follow the metrics' constants; no report module
reads the stored [eval] by key.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import camzoo.bench
from camzoo.bench import config as bench_config
from camzoo.bench import tables
from camzoo.bench.config import PRESETS, resolve_config, run_id
from camzoo.bench.record import RunRecord
from camzoo.bench.report import write_report
from camzoo.bench.store import ResultsStore
from camzoo.metrics import EvalSettings
from camzoo.metrics.causal import RISE_PROTOCOL

# bench/config.py's [eval] table as main had it before its scoring part came from EvalSettings
# (commit 4c82746): the merged config of every preset, and so its run id, must not change.
EVAL_BEFORE = {
    "images": 256, "batch_size": 128, "block_images": 1000, "keep_maps": 1000, "protocol": "default",
    "deletion_steps": 28, "deletion_fraction": 1.0, "deletion_target": "label", "substrates": ["zeros", "blur", "road"],
    "game_images": "all", "chunk_size": 64, "chunk_mb": "auto", "gallery_images": 4, "pointing_tolerance": 15.0,
    "pointing_reference_size": 224, "grid_games": [], "grid_threshold": 0.99, "grid_count": 64, "sensitivity": [],
    "randomisation_draws": 3, "reliability": "quick", "perturbation_draws": 5, "input_noise": [0.01, 2.0],
    "model_noise": [0.01, 1.0], "negligible_delta": 0.147, "negligible_span": 0.05, "min_alpha": 0.2,
    "min_oracle_share": 0.6,
}
# keys a store written before them lacks (added with the game images, discrimination, reliability cards)
NEWER_KEYS = ("game_images", "grid_games", "grid_threshold", "grid_count", "sensitivity", "randomisation_draws",
              "reliability", "perturbation_draws", "input_noise", "model_noise", "negligible_delta",
              "negligible_span", "min_alpha", "min_oracle_share", "block_images", "keep_maps", "chunk_mb")
REPORT_MODULES = ("tables", "explore", "report", "html", "summary", "reliability", "leaderboard", "plots")


@pytest.fixture(scope="module")
def run_dir(tiny_bench_run) -> Path:
    return tiny_bench_run


@pytest.mark.parametrize("preset", [*PRESETS, "custom"])
def test_presets_merge_to_the_same_config_and_run_id_as_before(preset, monkeypatch):
    now = resolve_config(preset)
    before = copy.deepcopy(bench_config._BASE)
    before["eval"] = dict(EVAL_BEFORE)
    monkeypatch.setattr(bench_config, "_base", lambda: copy.deepcopy(before))
    old = resolve_config(preset)
    assert now == old and json.dumps(now, sort_keys=True) == json.dumps(old, sort_keys=True)
    assert run_id(now) == run_id(old)


def test_the_config_scoring_defaults_are_evalsettings_fields():
    defaults = resolve_config("custom")["eval"]
    assert set(bench_config.scoring_defaults()) == {f.name for f in dataclasses.fields(EvalSettings)}
    assert set(bench_config.scoring_defaults()) <= set(defaults)
    assert EvalSettings.from_config(defaults) == EvalSettings()
    # TOML values: lists, not tuples, and "all" for every image
    assert all(not isinstance(value, tuple) for value in defaults.values()) and defaults["game_images"] == "all"
    # the literal part of the base [eval] holds the harness's keys only
    assert not set(bench_config._BASE["eval"]) & {f.name for f in dataclasses.fields(EvalSettings)}


def test_a_store_without_the_newer_eval_keys_reports_the_same(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("models", "*.png", "*.svg", "*.html", "*.gz"))
    with sqlite3.connect(old / "results.sqlite") as db:
        (stored_id, text), = db.execute("SELECT run_id, config FROM runs").fetchall()
        config = json.loads(text)
        assert all(config["eval"][key] == EVAL_BEFORE[key] for key in NEWER_KEYS)  # defaults: nothing may change
        config["eval"] = {k: v for k, v in config["eval"].items() if k not in NEWER_KEYS}
        db.execute("UPDATE runs SET config = ? WHERE run_id = ?", (json.dumps(config, sort_keys=True), stored_id))
    with ResultsStore(old) as store:
        record = RunRecord.from_store(store)
    assert "negligible_delta" not in record.config["eval"]
    assert record.settings == EvalSettings.from_config(config["eval"])
    for field in dataclasses.fields(EvalSettings):
        if field.name in NEWER_KEYS:
            assert getattr(record.settings, field.name) == getattr(EvalSettings(), field.name), field.name
    assert record.images == config["eval"]["images"] and record.game_images == record.images
    write_report(old, formats=("md", "csv", "tex"), out=tmp_path / "new")
    for name in ("summary.md", "summary.csv", "pairwise.csv", "reliability.csv", "summary.tex"):
        assert (tmp_path / "new" / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_load_carries_the_record(run_dir):
    results = camzoo.bench.load(run_dir)
    with ResultsStore(run_dir) as store:
        assert results.record == RunRecord.from_store(store, results.run_id)
    assert results.config is results.record.config and results.provenance is results.record.provenance
    assert results.record.settings == EvalSettings.from_config(results.config["eval"])
    assert results.record.seeds == tuple(results.config["seeds"]) and results.record.replicates == len(results.record.seeds)


def record_of(**evaluation: object) -> RunRecord:
    return RunRecord.from_config({"eval": {"images": 100, **evaluation}})


def test_protocol_notes_follow_the_settings_and_the_metrics_constants(monkeypatch):
    assert tables.causal_description(record_of(deletion_steps=6, deletion_fraction=0.15, game_images=48)) == \
        "label, 6 steps over first 15% px, first 48 images"
    assert tables.causal_description(record_of(deletion_target="prediction")) == \
        f"prediction, {EvalSettings().deletion_steps} steps"
    rise = record_of(protocol="rise", deletion_steps=6, deletion_fraction=0.5)  # RISE ignores both
    assert tables.causal_description(rise) == f"RISE protocol: {RISE_PROTOCOL.steps} steps, predicted class"
    assert rise.game_fraction == 1.0
    monkeypatch.setattr(tables, "RISE_PROTOCOL", dataclasses.replace(RISE_PROTOCOL, steps=RISE_PROTOCOL.steps + 3))
    assert f"{RISE_PROTOCOL.steps + 3} steps" in tables.causal_description(rise)  # not a literal copy
    grid = tables.discrimination_note(record_of())
    assert f"up to {EvalSettings().grid_count} grids" in grid and f"≥ {EvalSettings().grid_threshold:g}" in grid


def test_no_report_module_reads_the_stored_eval_by_key():
    """Only camzoo.bench.record reads a stored config's [eval]: a subscript or .get of "eval" elsewhere
    on the report side would be a second copy of its defaults."""
    root = Path(camzoo.bench.__file__).parent
    found = []
    for name in REPORT_MODULES:
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))):
            key = node.slice if isinstance(node, ast.Subscript) else \
                node.args[0] if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "get" and node.args else None
            if isinstance(key, ast.Constant) and key.value == "eval":
                found.append(f"{name}.py:{node.lineno}")
    assert not found, "reads of [eval] outside camzoo.bench.record: " + ", ".join(found)
