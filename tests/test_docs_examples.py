"""Every Python block in README.md and docs/*.md whose fence reads ``python runnable`` runs here.

Blocks of one file run in order, in one fresh interpreter (examples register methods, kinds and
metrics; a subprocess keeps them out of the other tests), in an empty working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python runnable\n(.*?)^```", re.S | re.M)


def runnable_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def test_the_runnable_examples_are_found():
    found = {path.name: len(runnable_blocks(path)) for path in DOCS}
    assert found["README.md"] >= 1 and found["contributing.md"] >= 3, found


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOCS if runnable_blocks(p)], ids=lambda p: p.name)
def test_runnable_examples(path: Path, tmp_path: Path) -> None:
    script = "\n\n".join(runnable_blocks(path))
    env = {**os.environ, "CAMZOO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{path.name}: an example failed\n{done.stderr[-3000:]}"


def test_the_benchmark_config_example_resolves(tmp_path: Path) -> None:
    """docs/benchmark.md's annotated TOML is a config `camzoo bench --config` accepts, as printed."""
    from camzoo.bench.config import resolve_config

    blocks = re.findall(r"^```toml\n(.*?)^```", (ROOT / "docs" / "benchmark.md").read_text(encoding="utf-8"),
                        re.S | re.M)
    (block,) = [b for b in blocks if b.startswith("preset = ")]
    (models,) = [b for b in blocks if b.startswith("[[models]]")]  # "Your own models": a config that resolves
    (tmp_path / "models.toml").write_text(models, encoding="utf-8")
    from camzoo.bench.validate import shape_problems

    assert shape_problems(resolve_config(None, tmp_path / "models.toml")) == []
    path = tmp_path / "example.toml"
    path.write_text(block, encoding="utf-8")
    config = resolve_config(None, path)
    assert config["eval"]["game_images"] == 48 and config["variants"][0]["name"] == "fin16"
    assert config["methods"] == resolve_config("quick")["methods"]  # the example shows the quick preset's
