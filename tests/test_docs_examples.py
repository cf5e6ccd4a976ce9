"""Every Python block in README.md and docs/*.md whose fence reads ``python runnable`` runs here.

Blocks of one file run in order, in one fresh process (examples register methods, kinds and
metrics; a process of their own keeps them out of the other tests and files), in an empty working
directory. The processes are forked from an interpreter that has imported torch and camzoo
(tests/forked.py): starting Python and importing them takes longer than most examples.
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

import pytest

from forked import Forked

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python runnable\n(.*?)^```", re.S | re.M)


def runnable_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def test_the_runnable_examples_are_found():
    found = {path.name: len(runnable_blocks(path)) for path in DOCS}
    assert found["README.md"] >= 1 and found["contributing.md"] >= 3, found


def run_example(name: str, script: str, out: str) -> None:
    """In a forked process: one file's blocks in OUT/<name>; writes "ok" or the traceback to OUT/<name>.result."""
    status = "ok"
    try:
        os.makedirs(os.path.join(out, name, "cache"))
        os.chdir(os.path.join(out, name))
        os.environ["CAMZOO_CACHE"] = os.path.join(out, name, "cache")
        exec(compile(script, name, "exec"), {"__name__": "__main__"})
    except BaseException:
        status = traceback.format_exc()
    with open(os.path.join(out, name + ".result"), "w", encoding="utf-8") as result:
        result.write(status)


EXAMPLE_FILES = [p for p in DOCS if runnable_blocks(p)]


@pytest.fixture(scope="module")
def example_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{file name: "ok" or the traceback} of every file's runnable blocks."""
    out = tmp_path_factory.mktemp("examples")
    results = {}
    for path in EXAMPLE_FILES:
        log = out / f"{path.name}.log"
        with Forked(run_example, path.name, "\n\n".join(runnable_blocks(path)), str(out), cwd=out, log=log) as process:
            status = process.wait(900)
        result = out / f"{path.name}.result"
        results[path.name] = result.read_text(encoding="utf-8") if result.is_file() else \
            f"no result: the process died with status {status}\n{log.read_text(encoding='utf-8')[-3000:]}"
    return results


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_runnable_examples(path: Path, example_results: dict[str, str]) -> None:
    assert example_results[path.name] == "ok", f"{path.name}: an example failed\n{example_results[path.name][-3000:]}"


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
