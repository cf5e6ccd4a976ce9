"""`camzoo bench --check`: the whole config is validated before the first cell, every problem is
named, and a config that fails leaves nothing behind (no store, no run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from camzoo.bench.config import resolve_config
from camzoo.bench.report import write_report
from camzoo.bench.store import ALL_SEEDS, CellKey, ResultsStore
from camzoo.bench.plan import ConfigError, build_plan
from camzoo.cli import main

TINY = """
preset = "custom"
seeds = [0, 1]
kinds = ["baseline", "lfi"]
backbones = ["resnet8"]
methods = ["gradcam", "attention", "random", "oracle"]
device = "{device}"

[[datasets]]
name = "shapes"
root = "{cache}"
image_size = 32
options = {{num_classes = 4, {extra}train = {{num_images = 64}}, test = {{num_images = 16}}}}

[train]
epochs = {epochs}
batch_size = 32
"""


def write_config(tmp_path: Path, epochs: int = 1, device: str = "cpu", extra: str = "", backbone: str = "resnet8") -> Path:
    path = tmp_path / "config.toml"
    text = TINY.format(cache=tmp_path / "cache", epochs=epochs, device=device, extra=extra)
    path.write_text(text.replace('"resnet8"', f'"{backbone}"'), encoding="utf-8")
    return path


def check(tmp_path: Path, config: Path):
    out = tmp_path / "out"
    # the plan alone: the estimate's probe has its own tests (test_bench_estimate.py)
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(out), "--check", "--no-estimate"])
    assert not out.exists(), "--check must not create the results directory"
    return result


def test_check_prints_the_plan_of_a_valid_config(tmp_path):
    result = check(tmp_path, write_config(tmp_path))
    assert result.exit_code == 0, result.output
    # baseline: model + gradcam, random, oracle; lfi: model + the four; 2 seeds; stability 3 + 4; gallery 1
    assert "4 model jobs" in result.output and "26 cells: 4 model, 14 method, 7 stability, 1 gallery" in result.output
    assert "config OK: device cpu" in result.output
    spread = CliRunner().invoke(main, ["bench", "--config", str(tmp_path / "config.toml"), "--check", "--nproc", "3",
                                       "--no-estimate"])
    assert spread.exit_code == 0 and "3 ranks: each takes the next model job when it is free" in spread.output, \
        spread.output
    assert "per rank" not in spread.output  # jobs are claimed as ranks free up: no fixed share to print


@pytest.mark.parametrize("what, edit, message", [
    ("dataset option", {"extra": "colour = 3, "}, "unexpected keyword argument 'colour'"),
    ("backbone", {"backbone": "resnet_nope"}, "unknown backbone 'resnet_nope'"),
    ("epochs", {"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ("device", {"device": "cuda:99"}, "device: device 'cuda:99'"),
])
def test_check_rejects_a_bad_config_with_a_clear_message(tmp_path, what, edit, message):
    result = check(tmp_path, write_config(tmp_path, **edit))
    assert result.exit_code != 0, what
    assert message in result.output and "nothing was run or written" in result.output, result.output
    assert "Traceback" not in result.output


def test_every_problem_is_listed_at_once():
    config = resolve_config("quick", overrides={
        "backbones": ["resnet8", "nope"], "train": {"epochs": 0}, "device": "cuda:99",
        "datasets": [{"name": "shapes", "options": {"num_classes": 1}}, {"name": "cifar10", "root": "/nowhere"}]})
    with pytest.raises(ConfigError) as caught:
        build_plan(config)
    text = str(caught.value)
    for part in ("device 'cuda:99'", "num_classes must be an int in 2..30", "dataset root '/nowhere' does not exist",
                 "epochs must be", "unknown backbone 'nope'"):
        assert part in text, part


def test_a_bad_config_leaves_no_run_behind(tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path, extra='content = "sketch", ')
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code != 0 and "content" in result.output and "fix the config" in result.output
    assert not (out / "results.sqlite").exists()
    report = CliRunner().invoke(main, ["report", str(out)])
    assert report.exit_code != 0 and "holds no results store" in report.output


def test_report_on_a_run_without_method_cells_is_a_clear_error(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.record_run("r1", resolve_config("quick"), {"device": "cpu"})
        store.write_cell("r1", CellKey("shapes", "-", "-", "-", ALL_SEEDS, "gallery"), {"eval_images": (4.0, None)},
                         {"images": np.zeros((1, 2, 2, 3), np.uint8)}, code_version="0", device="cpu")
    with pytest.raises(ValueError, match="run r1 .* has no finished method cells yet"):
        write_report(tmp_path)
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "no finished method cells" in result.output and "KeyError" not in result.output


def test_the_documented_check_of_the_standard_preset_is_what_it_prints():
    """docs/benchmark.md shows `camzoo bench --preset standard --check`: its counts and settings lines."""
    result = CliRunner().invoke(main, ["bench", "--preset", "standard", "--check", "--device", "cpu",
                                       "--no-estimate"])
    assert result.exit_code == 0, result.output
    docs = (Path(__file__).resolve().parents[1] / "docs" / "benchmark.md").read_text(encoding="utf-8")
    lines = result.output.splitlines()
    for line in [lines[1], *(line for line in lines if line.startswith(("eval:", "discrimination:")))]:
        assert line in docs, line
