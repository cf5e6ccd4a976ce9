"""The benchmark harness: config and presets, the runner, the results store, tables and plots.

``camzoo.bench.load(results_dir)`` reads a store into pandas DataFrames (camzoo.bench.explore).
It is imported on first use, so ``camzoo bench --print-config`` does not pay for pandas and SciPy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Results", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import explore

        return getattr(explore, name)
    raise AttributeError(f"module 'camzoo.bench' has no attribute {name!r}")
