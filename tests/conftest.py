"""Shared fixtures: a small timm CNN briefly trained on a task whose evidence has a known place.

Why trained: a random-init ResNet often yields all-zero Grad-CAM maps, which would let a wrong
implementation agree with a reference. Here the class is the quadrant holding a coloured square,
so maps are non-zero and should concentrate on the square.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from forked import LeftoverCheck
from helpers import quadrant_batch  # the quadrant task the trained fixture learns

# The suite's tensors are tiny: one thread avoids OpenMP hand-offs that cost more than the maths, and
# keeps the suite's time steady on a loaded machine (measured: 2 threads under load were up to 50x
# slower on a ResNet-8 forward). Subprocesses the tests start inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")


_LEFTOVERS: LeftoverCheck | None = None


def pytest_configure(config: pytest.Config) -> None:
    """The leftover-process check, then one torch thread in every process that runs tests. torch is
    not imported in pytest-xdist's controller, which runs none: that delayed both workers by ~2 s."""
    global _LEFTOVERS
    _LEFTOVERS = LeftoverCheck()
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(trylast=True)  # after pytest's own teardown has ended the file's fixtures
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """No test file may leave a process running (tests/forked.py's LeftoverCheck): checked after its last test."""
    problem = _LEFTOVERS and _LEFTOVERS.after_test(Path(str(item.path)), nextitem and Path(str(nextitem.path)))
    if problem:
        pytest.fail(problem, pytrace=False)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this pytest run sees: the workers' common base under pytest-xdist
    (its documented way to build a session fixture once), else this process's own base."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def built_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """``with built_once(factory, name) as (folder, ready)``: the first process to get here builds into
    ``folder`` (``ready`` False) while the others wait on a file lock, then find it ``ready``.

    Why: under ``pytest -n 2 --dist loadfile`` the files that share an expensive fixture may run on
    both workers; the fixture is still built once per run (pytest-xdist's documentation, "Making
    session-scoped fixtures execute only once"), without a scheduler of our own."""
    from filelock import FileLock

    root = _shared_dir(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        ready = done.is_file()
        if not ready:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        yield folder, ready
        done.touch()


def _train_quadrant_resnet() -> dict:
    """timm resnet10t (4 classes, 64 px) after 30 Adam steps on :func:`quadrant_batch` images."""
    import timm
    import torch

    torch.manual_seed(0)
    images, labels, _ = quadrant_batch(512, seed=1)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(2)
    for _ in range(30):
        idx = torch.randint(0, len(images), (24,), generator=order)
        loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.state_dict()


@pytest.fixture(scope="session")
def trained_resnet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """timm resnet10t (4 classes, 64 px) after 30 Adam steps; plus a held-out batch with masks. The
    weights are trained once per run and shared through a file (``weights_only`` load)."""
    import timm
    import torch

    with built_once(tmp_path_factory, "trained_resnet") as (folder, ready):
        if not ready:
            torch.save(_train_quadrant_resnet(), folder / "weights.pt")
        state = torch.load(folder / "weights.pt", weights_only=True)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    model.load_state_dict(state)
    model.eval()
    test_images, test_labels, test_masks = quadrant_batch(16, seed=3)
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    return {"model": model, "images": test_images, "labels": test_labels, "masks": test_masks, "accuracy": accuracy}


@pytest.fixture(scope="session")
def tiny_bench_run(tmp_path_factory: pytest.TempPathFactory):
    """A finished tiny bench (with report.html): test_bench's grid trimmed to two seeds (stability
    needs a pair), two kinds, one method of each sort, one substrate, 8 images. Read it, do not
    change it: copy it first (shutil.copytree) where a test writes. Built once per run."""
    from click.testing import CliRunner

    from camzoo.cli import main
    from helpers import tiny_config

    trim = {
        'methods = ["gradcam", "eigencam", "attention", "random", "oracle"]':
            'methods = ["gradcam", "attention", "random", "oracle"]',
        'substrates = ["zeros", "road"]': 'substrates = ["zeros"]',
        "images = 16": "images = 8",
        "num_images = 128": "num_images = 64",
    }
    with built_once(tmp_path_factory, "camzoo-tiny-run") as (base, ready):
        out = base / "out"
        if not ready:
            config = tiny_config(base)
            text = config.read_text(encoding="utf-8")
            for old, new in trim.items():
                assert old in text, f"test_bench.TINY changed: {old!r} is gone"
                text = text.replace(old, new)
            config.write_text(text, encoding="utf-8")
            result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(out), "--no-progress"])
            assert result.exit_code == 0, result.output
    return out


def _slow_marks(path: Path) -> int:
    return path.read_text(encoding="utf-8").count("@pytest.mark.slow") if path.is_file() else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files with the most ``slow`` tests first, then the larger files (a file of one 30-s test
    that started last ran alone on one core while the other idled). ``--dist loadfile`` hands the
    files out in this order: it is the order the workers report their collection in."""
    order: dict[Path, tuple[int, int, int]] = {}
    for index, item in enumerate(items):
        path = Path(str(item.path))
        if path not in order:
            order[path] = (-_slow_marks(path), 0, index)
        slow, count, first = order[path]
        order[path] = (slow, count - 1, first)
    items.sort(key=lambda item: order[Path(str(item.path))])


def _load_benchmark_script(name: str):
    """A script from benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("paper_claims")``: a benchmarks/ script as a module, for tests that call it."""
    return _load_benchmark_script
