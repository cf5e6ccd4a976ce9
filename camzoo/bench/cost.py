"""What a method cell costs besides time: the peak memory of explaining the evaluation images.

Why per cell and reset each time: a process-wide high-water mark only ever grows, so the second
method of a run would inherit the first one's peak. CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` (tensor memory, excluding the caching allocator's slack). CPU: the growth
of the resident set's peak over the cell; on Linux the peak is reset first (``/proc/self/clear_refs``),
elsewhere it is the growth of the process-lifetime peak (``resource.ru_maxrss``), which reads 0 once
an earlier cell went higher — a floor, said so in the metric's description.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
import torch

PEAK_METRIC = "peak_memory_mb"  # its entry in the metrics table (camzoo.metrics.table)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_rss_peak() -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _lifetime_peak_kb() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, kB on Linux


class PeakMemory:
    """``with PeakMemory(device) as meter: ...`` then ``meter.megabytes``: the block's peak memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.megabytes = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif _reset_rss_peak():
            self._start, self._read = _status_kb("VmRSS") or 0, lambda: _status_kb("VmHWM") or 0
        else:
            self._start, self._read = _lifetime_peak_kb(), _lifetime_peak_kb
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.megabytes = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        else:
            self.megabytes = max(0, self._read() - self._start) / 1024

