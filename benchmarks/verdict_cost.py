"""Where a benchmark run's time goes: by phase (from the store) and by metric (timed here).

    python benchmarks/verdict_cost.py results/quick            # a finished run's directory
    python benchmarks/verdict_cost.py results/quick --no-phases --kinds lfi

Phases: every process's cells in the order it committed them, each charged the time since that
process's previous commit (its first: since the run began), summed per phase over the processes.
A model cell's time is its training plus its accuracy pass; the training alone is read from the
models' train logs. The report is timed here (``write_report`` rewrites the directory's report
files with the same content), and within it the bootstrap (summarise with the run's resamples
against one) and the paired tests (the time inside ``stats.significant_best``).

Metrics: one model job per kind (its seed-0 checkpoint from the directory's ``models/``) is scored
again as the runner scores it: the plan's one-pass groups explained, each row's metrics with the
row's settings, the model's memo shared by its rows. Each metric is charged the seconds of its own
computation (metrics sharing one computation are charged once, where it runs). Times are
wall-clock seconds in this process, on torch's threads (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from camzoo.batchnorm_folding import fold_batchnorm
from camzoo.bench import build_plan
from camzoo.bench import summary as summary_module
from camzoo.bench.config import resolve_config
from camzoo.bench.record import RunRecord, latest_run
from camzoo.bench.report import write_report
from camzoo.bench.evaluation import explain_group, load_eval_set
from camzoo.bench.store import ResultsStore
from camzoo.bench.summary import summarise
from camzoo.methods import get_method
from camzoo.metrics import METRICS
from camzoo.metrics.context import MethodSpec, ScoringContext
from camzoo.models import load_model

PHASES = ("training + accuracy", "methods", "controls", "stability", "gallery")


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")


def phase_seconds(store: ResultsStore, run: dict) -> tuple[dict[str, float], float]:
    """Process-seconds per phase, and the wall time from the run's start to its last cell."""
    totals = dict.fromkeys(PHASES, 0.0)
    workers = store.workers(run["run_id"])
    start = _time(run["created_at"])
    previous: dict[str, dt.datetime] = {}
    last = start
    for cell, finished in store.finish_times(run["run_id"]).items():
        worker, when = workers.get(cell, ""), _time(finished)
        seconds = (when - previous.get(worker, start)).total_seconds()
        previous[worker], last = when, max(last, when)
        phase = ("gallery" if cell.method == "gallery" else "training + accuracy" if cell.method == "model"
                 else "stability" if cell.seed == -1 else "controls" if get_method(cell.method).reference else "methods")
        totals[phase] += seconds
    return totals, (last - start).total_seconds()


def training_seconds(directory: Path) -> list[float]:
    """Each trained model's training seconds (its train log), in directory order."""
    return [sum(epoch["seconds"] for epoch in json.loads(log.read_text())["history"])
            for log in sorted(directory.glob("models/*/train_log.json"))]


def report_seconds(store: ResultsStore, run: dict, directory: Path) -> dict[str, float]:
    """The report: all of it, its bootstrap and its paired tests."""
    spent = [0.0]
    original = summary_module.stats.significant_best

    def timed(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - begin

    summary_module.stats.significant_best = timed
    try:
        begin = time.perf_counter()
        summarise(store, RunRecord.from_row(run), resamples=2000)
        full = time.perf_counter() - begin
    finally:
        summary_module.stats.significant_best = original
    begin = time.perf_counter()
    summarise(store, RunRecord.from_row(run), resamples=1)
    one = time.perf_counter() - begin
    begin = time.perf_counter()
    write_report(directory, run["run_id"], html=True)
    return {"report": time.perf_counter() - begin, "bootstrap": full - one, "paired tests": spent[0]}


def phases(directory: Path) -> str:
    with ResultsStore(directory) as store:
        run = latest_run(store)
        cells, wall = phase_seconds(store, run)
        report = report_seconds(store, run, directory)
    trained = training_seconds(directory)
    lines = [f"run {run['run_id']}: cells {wall:.0f} s wall, then the report {report['report']:.1f} s",
             "phase (process-seconds)         seconds"]
    lines += [f"  {name:28s} {seconds:8.1f}" for name, seconds in cells.items()]
    if trained:
        lines.append(f"    of which training ({len(trained)} models) {sum(trained):8.1f}  "
                     f"(per model {min(trained):.0f}-{max(trained):.0f})")
    lines += [f"  {name:28s} {seconds:8.1f}" for name, seconds in report.items()]
    return "\n".join(lines)


def timed_cell(scorer, eval_set, maps, settings, method: str, layer: str | None, model_memo: dict) -> dict[str, float]:
    """Seconds per metric of one cell, scored as ``metrics.score_maps`` scores it."""
    memo = eval_set.memo if get_method(method).reference else None
    context = ScoringContext(scorer, eval_set.images, maps, eval_set.labels, eval_set.masks, eval_set.boxes, settings,
                             map_memo=memo, model_memo=model_memo,
                             method=MethodSpec(MethodSpec.parse(method).name, layer))
    costs = {}
    for name, info in METRICS.items():
        if info.compute is None or not info.selected(settings) or not all(context.has(need) for need in info.needs):
            continue
        begin = time.perf_counter()
        if info.compute(context) is not None:
            costs[name] = time.perf_counter() - begin
    return costs


def job_costs(directory: Path, config: dict, kind: str, images: int) -> dict[str, float]:
    """Seconds per metric (and for the explanations) of one model job of ``kind``, summed over its rows."""
    plan = build_plan({**config, "device": "cpu"})
    job = next(job for job in plan.jobs if job.kind == kind and job.seed == plan.jobs[0].seed)
    checkpoint = next(iter(sorted(directory.glob(f"models/*-{kind}-seed{job.seed}-*/model.pt"))), None)
    if checkpoint is None:
        return {}
    model = load_model(checkpoint)
    scorer = fold_batchnorm(model)  # as the runner scores: BatchNorm folded into the convolutions
    eval_set = load_eval_set(job.dataset.load("test"), images, torch.device("cpu"))
    totals: dict[str, float] = defaultdict(float)
    model_memo: dict = {}
    for group in job.groups:
        begin = time.perf_counter()
        explained, _ = explain_group(model, eval_set, group, plan.batch_size, torch.device("cpu"), job.layers)
        totals["(explaining the rows)"] += time.perf_counter() - begin
        for method in group:
            maps, _ = explained[method]
            costs = timed_cell(scorer, eval_set, maps, plan.settings_for(method), method, job.layer(method), model_memo)
            for name, seconds in costs.items():
                totals[name] += seconds
    return dict(totals)


def metrics_table(directory: Path, kinds: list[str] | None, images: int | None) -> str:
    with ResultsStore(directory) as store:
        run = latest_run(store)
    config = resolve_config(overrides={k: v for k, v in run["config"].items() if k != "preset"}, preset="custom")
    images = images or config["eval"]["images"]
    kinds = kinds or list(config["kinds"])
    costs = {kind: job_costs(directory, config, kind, images) for kind in kinds}
    kinds = [kind for kind in kinds if costs[kind]]
    names = sorted({name for cost in costs.values() for name in cost}, key=lambda n: -sum(c.get(n, 0.0) for c in costs.values()))
    lines = [f"one model job per kind (seed-0 checkpoint), {images} images, {torch.get_num_threads()} thread(s); seconds",
             f"{'metric':28s}" + "".join(f"{kind:>10s}" for kind in kinds)]
    lines += [f"{name:28s}" + "".join(f"{costs[kind].get(name, 0.0):10.2f}" for kind in kinds) for name in names]
    lines.append(f"{'total':28s}" + "".join(f"{sum(costs[kind].values()):10.2f}" for kind in kinds))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--images", type=int, default=None, help="evaluation images for the metric table (default: the run's)")
    parser.add_argument("--kinds", default=None, help="comma-separated kinds for the metric table (default: the run's)")
    parser.add_argument("--no-phases", action="store_true", help="skip the phases (only the metric table)")
    args = parser.parse_args(argv)
    if not args.no_phases:
        print(phases(args.directory))
    print(metrics_table(args.directory, args.kinds.split(",") if args.kinds else None, args.images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
