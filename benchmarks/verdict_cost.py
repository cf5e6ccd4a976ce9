"""What the verdict machinery costs: one benchmark cell scored with the old quick settings against the
new ones, per metric, on the same model and images; and the report's statistics (bootstrap CIs,
paired tests) against the rest of the report.

    python benchmarks/verdict_cost.py results/quick            # a finished quick-preset directory

The model is the directory's first baseline checkpoint; the images are the run's evaluation images;
"new" is the run's own eval settings with the three default substrates. Times are wall-clock seconds in this process (one thread unless OMP_NUM_THREADS says more).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from camzoo.bench.config import resolve_config
from camzoo.bench.report import latest_run
from camzoo.bench.runner import explain_all, load_eval_set
from camzoo.bench.store import ResultsStore
from camzoo.bench.summary import summarise
from camzoo.bench.validate import load_split
from camzoo.metrics import METRICS
from camzoo.metrics.table import ScoringContext
from camzoo.models import load_model

OLD_SETTINGS = {"deletion_steps": 16, "deletion_fraction": 1.0, "substrates": []}  # before issue 10


def cell_costs(model, eval_set, settings: dict) -> dict[str, float]:
    """Seconds per metric of one gradcam cell (metrics sharing a computation are charged once)."""
    maps, _, _ = explain_all(model, eval_set, "gradcam", 128, torch.device("cpu"))
    context = ScoringContext(model, eval_set.images, maps, eval_set.labels, eval_set.masks, eval_set.boxes, settings)
    costs = {}
    for name, info in METRICS.items():
        if info.compute is None or not all(context.has(need) for need in info.needs):
            continue
        start = time.perf_counter()
        if info.compute(context) is not None:
            costs[name] = time.perf_counter() - start
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--images", type=int, default=160)
    args = parser.parse_args(argv)
    with ResultsStore(args.directory) as store:
        run = latest_run(store)
    config = resolve_config(overrides={k: v for k, v in run["config"].items() if k != "preset"}, preset="custom")
    eval_set = load_eval_set(load_split(config["datasets"][0], "test"), args.images, torch.device("cpu"))
    checkpoint = sorted(args.directory.glob("models/*baseline*/model.pt"))[0]
    model = load_model(checkpoint)
    old = cell_costs(model, eval_set, {**config["eval"], **OLD_SETTINGS})
    new = cell_costs(model, eval_set, {**config["eval"], "substrates": ["zeros", "blur", "road"]})
    print(f"one gradcam cell, {eval_set.images.shape[0]} images, {torch.get_num_threads()} thread(s); seconds")
    print(f"{'metric':28s} {'old':>8s} {'new':>8s}")
    for name in new:
        print(f"{name:28s} {old.get(name, 0.0):8.2f} {new[name]:8.2f}")
    print(f"{'total':28s} {sum(old.values()):8.2f} {sum(new.values()):8.2f}")
    with ResultsStore(args.directory) as store:
        start = time.perf_counter()
        summarise(store, run, resamples=2000)
        with_statistics = time.perf_counter() - start
        start = time.perf_counter()
        summarise(store, run, resamples=1)
        without = time.perf_counter() - start
    print(f"report statistics: summarise {with_statistics:.2f} s with 2,000 resamples, {without:.2f} s with 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
