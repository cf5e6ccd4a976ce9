"""What the verdict machinery costs: the budget of a finished run (controls, bootstrap CIs and paired
tests against everything else), and one benchmark cell scored with the old quick settings against the
run's own, per metric, on the same model and images.

    python benchmarks/verdict_cost.py results/quick            # a finished quick-preset directory

The budget reads the cells' finish times from the store (so the run must have trained its models
itself for the total to include training) and times the report here: its bootstrap (summarise with
2,000 resamples against 1), its paired tests (the time inside ``stats.significant_best``) and the
whole ``write_report`` (it rewrites the directory's report files, with the same content). The cell
comparison uses the directory's first baseline checkpoint and the run's evaluation images; "new" is
the run's own eval settings. Times are wall-clock seconds in this process (torch's default threads
unless OMP_NUM_THREADS says otherwise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from camzoo.bench import summary as summary_module
from camzoo.bench.config import resolve_config
from camzoo.bench.report import latest_run, write_report
from camzoo.bench.runner import explain_all, load_eval_set
from camzoo.bench.store import ResultsStore
from camzoo.bench.summary import summarise
from camzoo.bench.validate import load_split
from camzoo.methods import get_method
from camzoo.metrics import METRICS, EvalSettings
from camzoo.metrics.table import ScoringContext
from camzoo.models import load_model

# the quick preset's scoring before its games were capped and given substrates
OLD_SETTINGS = {"deletion_steps": 16, "deletion_fraction": 1.0, "substrates": (), "game_images": None}


def cell_costs(model, eval_set, settings: EvalSettings) -> dict[str, float]:
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


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")


def cell_seconds(store: ResultsStore, run: dict) -> dict[str, float]:
    """Seconds per kind of cell, each cell charged the time since the previous one finished (the
    first since the run began): training (model cells), methods, controls, stability, bookkeeping."""
    totals = {"training": 0.0, "methods": 0.0, "controls": 0.0, "stability": 0.0, "bookkeeping": 0.0}
    previous = _time(run["created_at"])
    for cell, finished in store.finish_times(run["run_id"]).items():
        seconds, previous = (_time(finished) - previous).total_seconds(), _time(finished)
        kind = ("bookkeeping" if cell.method == "gallery" else "training" if cell.method == "model"
                else "stability" if cell.seed == -1 else "controls" if get_method(cell.method).reference else "methods")
        totals[kind] += seconds
    return totals


def statistics_seconds(store: ResultsStore, run: dict) -> dict[str, float]:
    """The report's bootstrap and paired tests: summarise with the run's resamples against one resample,
    and the time spent in the tests (stats.significant_best) during the full summary."""
    spent = [0.0]
    original = summary_module.stats.significant_best

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    summary_module.stats.significant_best = timed
    try:
        start = time.perf_counter()
        summarise(store, run, resamples=2000)
        full = time.perf_counter() - start
    finally:
        summary_module.stats.significant_best = original
    start = time.perf_counter()
    summarise(store, run, resamples=1)
    one = time.perf_counter() - start
    return {"bootstrap": full - one, "tests": spent[0]}


def budget(directory: Path) -> str:
    """The issue's budget: controls + bootstrap + tests against the rest of the run (training included)."""
    with ResultsStore(directory) as store:
        run = latest_run(store)
        cells = cell_seconds(store, run)
        statistics = statistics_seconds(store, run)
    start = time.perf_counter()
    write_report(directory, run["run_id"], html=True)
    report = time.perf_counter() - start
    total = sum(cells.values()) + report
    verdict = cells["controls"] + statistics["bootstrap"] + statistics["tests"]
    lines = [f"run {run['run_id']}: cells {sum(cells.values()):.0f} s + report {report:.1f} s = {total:.0f} s"]
    lines += [f"  {name:12s} {seconds:7.1f} s" for name, seconds in cells.items()]
    lines += [f"  report       {report:7.1f} s, of which bootstrap {statistics['bootstrap']:.1f} s and "
              f"tests {statistics['tests']:.1f} s"]
    lines.append(f"controls + bootstrap + tests = {verdict:.1f} s, {100 * verdict / (total - verdict):.1f} % added "
                 f"to the rest ({total - verdict:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--no-budget", action="store_true", help="skip the run's budget (only the cell comparison)")
    args = parser.parse_args(argv)
    if not args.no_budget:
        print(budget(args.directory))
    with ResultsStore(args.directory) as store:
        run = latest_run(store)
    config = resolve_config(overrides={k: v for k, v in run["config"].items() if k != "preset"}, preset="custom")
    eval_set = load_eval_set(load_split(config["datasets"][0], "test"), args.images, torch.device("cpu"))
    checkpoint = sorted(args.directory.glob("models/*baseline*/model.pt"))[0]
    model = load_model(checkpoint)
    settings = EvalSettings.from_config(config["eval"])
    old = cell_costs(model, eval_set, replace(settings, **OLD_SETTINGS))
    new = cell_costs(model, eval_set, replace(settings, substrates=("zeros", "blur", "road")))
    print(f"one gradcam cell, {eval_set.images.shape[0]} images, {torch.get_num_threads()} thread(s); seconds")
    print(f"{'metric':28s} {'old':>8s} {'new':>8s}")
    for name in new:
        print(f"{name:28s} {old.get(name, 0.0):8.2f} {new[name]:8.2f}")
    print(f"{'total':28s} {sum(old.values()):8.2f} {sum(new.values()):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
