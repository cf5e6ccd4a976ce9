"""How far `camzoo bench --check`'s time estimate is from the run it estimates.

    python benchmarks/estimate_accuracy.py --preset quick --nproc 2 --out /tmp/acc-quick
    python benchmarks/estimate_accuracy.py --config benchmarks/standard_subset.toml --nproc 2 --out /tmp/acc-sub
    python benchmarks/estimate_accuracy.py --preset quick --nproc 2 --measured results/quick   # a finished run

First the estimate, as `--check` computes it (``camzoo.bench.estimate.estimate``: the probe, then the cost
model), then the run itself (`camzoo bench` in a subprocess, into a fresh ``--out``), timed from the
command's start to its exit. The measured side splits the run as benchmarks/verdict_cost.py does: each
process's cells in commit order, each charged the time since that process's previous commit (process-
seconds per phase); the explanations from each method cell's ``ms_per_image`` (x its images, once per
one-pass group), the discrimination metrics from its ``metric_seconds``; the games (and every other
per-image metric) are the rest of the method cells' time. With ``eval.reliability = "full"`` the cells
also hold the perturbed passes, which are not split: only their sum (scoring) is compared. The report is
the time from the last cell to the command's exit; start-up the time from the command's start to the
run's first record. Error = (estimate - measured) / measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from camzoo.bench.config import resolve_config
from camzoo.bench.estimate import estimate
from camzoo.bench.plan import build_plan
from camzoo.bench.record import latest_run
from camzoo.bench.store import ResultsStore
from camzoo.metrics import METRICS
from verdict_cost import phase_seconds


def _time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def measured_phases(directory: Path, plan) -> dict[str, float]:
    """A finished run's process-seconds by the estimate's phases (None where the store cannot split them)."""
    groups = {job.key(m).as_tuple(): group for job in plan.jobs for group in job.groups for m in group}
    with ResultsStore(directory) as store:
        run = latest_run(store)
        cells, wall = phase_seconds(store, run)
        results = store.results(run["run_id"])
        images = {r["dataset"]: int(r["value"]) for r in results if r["metric"] == "eval_images"}
        explained: dict[tuple, float] = {}
        for row in (r for r in results if r["metric"] == "ms_per_image"):
            key = (row["dataset"], row["backbone"], row["kind"], row["variant"], row["seed"], row["method"])
            group = groups.get(key, (row["method"],))
            explained[key[:5] + (group,)] = row["value"] / 1000 * images[row["dataset"]]
        grids = 0.0
        for key, names in store.arrays(run["run_id"], "metric_names"):
            seconds = store.array(run["run_id"], key, "metric_seconds")
            inputs = [METRICS[name].reads == "inputs" if name in METRICS else False for name in names]
            grids += float(np.sum(seconds[np.array(inputs, dtype=bool)])) * images[key.dataset] if len(names) else 0.0
        finished = max(_time(t) for t in store.finish_times(run["run_id"]).values())
        started = _time(run["created_at"])
    scoring = cells["methods"] + cells["controls"]
    full = plan.settings.reliability == "full"
    explain = sum(explained.values())
    return {"train": cells["training + accuracy"] + cells["gallery"], "scoring": scoring,
            "explain": None if full else explain, "games": None if full else scoring - explain - grids,
            "grids": None if full else grids, "stability": cells["stability"], "cells wall": wall,
            "started": started, "finished": finished}


def run_bench(args: argparse.Namespace) -> tuple[float, float]:
    """`camzoo bench` into a fresh directory: (its start, its end) as Unix times."""
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty: the measured run needs a fresh directory")
    command = [sys.executable, "-m", "camzoo", "bench", "--nproc", str(args.nproc), "--out", str(args.out),
               "--no-progress", "--preset", args.preset]
    if args.config:
        command += ["--config", str(args.config)]
    begin = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return begin, time.time()


def _error(estimated: float, measured: float | None) -> str:
    if measured is None or measured <= 0:
        return "-"
    return f"{100 * (estimated - measured) / measured:+.0f} %"


def table(estimated: dict[str, float], measured: dict[str, float | None]) -> str:
    lines = [f"{'phase':34s}{'estimate (s)':>14s}{'measured (s)':>14s}{'error':>10s}"]
    for name, value in estimated.items():
        found = measured.get(name)
        shown = "-" if found is None else f"{found:.0f}"
        lines.append(f"{name:34s}{value:14.0f}{shown:>14s}{_error(value, found):>10s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--config", type=Path, default=None, help="TOML overriding the preset")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="a fresh directory for the measured run")
    parser.add_argument("--measured", type=Path, default=None, help="compare with this finished run instead")
    parser.add_argument("--wall", type=float, default=None, help="with --measured: the run's wall seconds")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.measured is None):
        parser.error("give --out (run it) or --measured (a finished run)")
    config = resolve_config(args.preset, args.config)
    plan = build_plan(config, world_size=args.nproc)
    found = estimate(plan, args.nproc)
    print(found.text())
    if args.measured is None:
        begin, end = run_bench(args)
        directory, wall = args.out, end - begin
    else:
        begin, directory, wall = None, args.measured, args.wall
    measured = measured_phases(directory, plan)
    process = found.process_seconds()
    estimated = {"train": process["train"], "scoring": process["explain"] + process["games"] + process["grids"],
                 "explain": process["explain"], "games": process["games"], "grids": process["grids"],
                 "stability": process["stability"], "cells wall": found.jobs_wall + found.stability,
                 "report": found.report, "total wall": found.total}
    if begin is not None:
        measured["report"] = begin + wall - measured["finished"]
        measured["start-up"] = measured["started"] - begin
    measured["total wall"] = wall
    print(f"\n{plan.run_id}: {len(plan.jobs)} model jobs, {plan.cells} cells, --nproc {args.nproc}; "
          "process-seconds per phase, wall seconds for the last three rows")
    print(table(estimated, measured))
    if "start-up" in measured:
        print(f"start-up (not estimated): {measured['start-up']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
