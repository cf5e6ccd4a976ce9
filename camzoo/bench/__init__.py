"""The benchmark harness: config and presets, the plan, the runner, the results store, tables and plots.

``camzoo.bench.build_plan(config)`` validates a merged config into a frozen plan, which
``BenchRunner(plan, out_dir).run()`` executes; ``camzoo.bench.load(results_dir)`` reads a store into
pandas DataFrames (camzoo.bench.explore). They are imported on first use, so ``camzoo bench
--print-config`` does not pay for pandas and SciPy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BenchPlan", "BenchRunner", "Results", "build_plan", "load"]
_HOMES = {"Results": "explore", "load": "explore", "BenchPlan": "plan", "build_plan": "plan", "BenchRunner": "runner"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'camzoo.bench' has no attribute {name!r}")
