"""Shared fixtures: a small timm CNN briefly trained on a task whose evidence has a known place.

Why trained: a random-init ResNet often yields all-zero Grad-CAM maps, which would let a wrong
implementation agree with a reference. Here the class is the quadrant holding a coloured square,
so maps are non-zero and should concentrate on the square.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

SQUARE_COLOUR = (2.0, -1.0, 1.5)  # in normalised units: far from the N(0, 0.5) background noise

# The suite's tensors are tiny: one thread avoids OpenMP hand-offs that cost more than the maths, and
# keeps the suite's time steady on a loaded machine (measured: 2 threads under load were up to 50x
# slower on a ResNet-8 forward). Subprocesses the tests start inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in every process that runs tests. Not imported in pytest-xdist's controller,
    which runs none: importing torch there delayed the start of both workers by ~2 s."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import torch

    torch.set_num_threads(1)


def quadrant_batch(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images (3,size,size) of noise with one square in quadrant `label`; returns images, labels, masks."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator) * 0.5
    labels = torch.randint(0, 4, (n,), generator=generator)
    half, side = size // 2, size // 4
    top = torch.randint(0, half - side + 1, (n,), generator=generator) + (labels // 2) * half
    left = torch.randint(0, half - side + 1, (n,), generator=generator) + (labels % 2) * half
    rows = torch.arange(size)[None, :, None]
    cols = torch.arange(size)[None, None, :]
    masks = (
        (rows >= top[:, None, None])
        & (rows < top[:, None, None] + side)
        & (cols >= left[:, None, None])
        & (cols < left[:, None, None] + side)
    )
    colour = torch.tensor(SQUARE_COLOUR)[None, :, None, None]
    return torch.where(masks[:, None], colour, images), labels, masks


@pytest.fixture(scope="session")
def trained_resnet() -> dict:
    """timm resnet10t (4 classes, 64 px) after 30 Adam steps; plus a held-out batch with masks."""
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
    optimiser.zero_grad(set_to_none=True)
    model.eval()
    test_images, test_labels, test_masks = quadrant_batch(16, seed=3)
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    return {"model": model, "images": test_images, "labels": test_labels, "masks": test_masks, "accuracy": accuracy}


@pytest.fixture(scope="session")
def tiny_bench_run(tmp_path_factory: pytest.TempPathFactory):
    """A finished tiny bench (with report.html): test_bench's grid trimmed to two seeds (stability
    needs a pair), two kinds, one method of each sort, one substrate, 8 images. Read it, do not
    change it: copy it first (shutil.copytree) where a test writes."""
    from click.testing import CliRunner

    from camzoo.cli import main
    from test_bench import tiny_config

    trim = {
        'methods = ["gradcam", "eigencam", "attention", "random", "oracle"]':
            'methods = ["gradcam", "attention", "random", "oracle"]',
        'substrates = ["zeros", "road"]': 'substrates = ["zeros"]',
        "images = 16": "images = 8",
        "num_images = 128": "num_images = 64",
    }
    base = tmp_path_factory.mktemp("camzoo-tiny-run")
    config = tiny_config(base)
    text = config.read_text(encoding="utf-8")
    for old, new in trim.items():
        assert old in text, f"test_bench.TINY changed: {old!r} is gone"
        text = text.replace(old, new)
    config.write_text(text, encoding="utf-8")
    out = base / "out"
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


# What takes seconds to build once per pytest process: the session fixtures, and tests/forked.py's
# fork server (its preloaded interpreter). Under `pytest -n N --dist loadfile` (the Makefile's), the
# files that name one of them run on one worker, so each is built once, not once per worker.
SHARED_FIXTURES = ("trained_resnet", "tiny_bench_run", "forked")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's file scheduling, with the files that share an expensive fixture as one unit, and
    the units with the most ``slow`` tests first (a file of one 30-s test that starts last runs alone
    on one core while the other idles).

    Why a scheduler and not ``xdist_group`` marks: pytest-xdist 3.8 puts the group into a node id
    attribute that pytest 9.2 no longer reads, so ``--dist loadgroup`` groups nothing there.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    root = config.rootpath

    @functools.cache
    def source(file: str) -> str:
        return (root / file).read_text(encoding="utf-8") if (root / file).is_file() else ""

    @functools.cache
    def unit_of(file: str) -> str:
        return next((name for name in SHARED_FIXTURES if re.search(rf"\b{name}\b", source(file))), file)

    def slow_tests(nodeids) -> int:
        """``slow`` marks in the files of a unit's tests."""
        return sum(source(file).count("@pytest.mark.slow") for file in {n.split("::", 1)[0] for n in nodeids})

    class SharedFixtureScheduling(LoadFileScheduling):
        _ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return unit_of(super()._split_scope(nodeid))

        def _assign_work_unit(self, node) -> None:
            if not self._ordered:  # the first call: the queue of units is complete
                self._ordered = True
                units = sorted(self.workqueue.items(), key=lambda unit: (-slow_tests(unit[1]), -len(unit[1])))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return SharedFixtureScheduling(config, log)


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
