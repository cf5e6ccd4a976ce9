"""Timing helper shared by the benchmark scripts: warm-up, device sync, interleaved medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

from camzoo.modelutil import synchronize


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(
    runs: Mapping[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median wall time of each run over ``repeats`` rounds after ``warmup`` rounds.

    Runs are interleaved round-robin, so a burst of load from elsewhere on the machine hits every
    run alike and the ratios between them stay meaningful.
    """
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}
