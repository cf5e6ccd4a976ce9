"""``camzoo bench --nproc N`` and ``camzoo train --nproc N``: N ranks on this node, as torchrun starts them.

Why torchrun's agent runs in the calling process and not as a ``torchrun`` child: that process has
imported torch already, and a second interpreter importing it again cost ~3 s of CPU per launch.
On the CPU the ranks are forked from it, torch and the modules the ranks need already imported (a
new interpreter costs each rank ~6 s of CPU, the largest cost of a small CPU job's launch);
torchrun's agent still watches them, stops the group when one dies and gives each its rank. With
CUDA they are new interpreters, as torchrun starts them: CUDA cannot be used in a forked process.
Multi-node runs call torchrun themselves (docs/benchmark.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..modelutil import resolve_device


def launch(nproc: int, arguments: Sequence[str], device: str = "auto",
           command: Callable[[list[str]], Any] | None = None, preload: Sequence[str] = ()) -> int:
    """Run ``camzoo ARGUMENTS`` on ``nproc`` ranks (what ``torchrun --standalone --nproc-per-node N -m
    camzoo ARGUMENTS`` does); the exit status of the group.

    ``command(arguments)`` runs the command in a rank; given it, and a ``device`` that is the CPU
    ("cpu", or "auto" without CUDA), the ranks are forked from this process after importing the
    ``preload`` modules; otherwise they are new interpreters.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be a positive integer, got {nproc!r}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        if command is not None and _on_cpu(device):
            _launch_forked(nproc, list(arguments), command, preload)
        else:
            from torch.distributed.run import parse_args, run

            run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "camzoo", *arguments]))
    except ChildFailedError as err:  # what torchrun prints: which rank failed, how, and its error file
        print(err.format_msg(), file=sys.stderr)
        return 1
    except SignalException as err:  # Ctrl-C or a kill: torchrun stopped the ranks first
        return 128 + int(err.sigval)
    return 0


def _on_cpu(device: str) -> bool:
    """Whether ranks asked for ``device`` run on the CPU (camzoo.modelutil.resolve_device); a name
    that resolves to nothing here is left to the ranks, which say what is wrong with it."""
    try:
        return resolve_device(device).type == "cpu"
    except ValueError:
        return False


def _launch_forked(nproc: int, arguments: list[str], command: Callable[[list[str]], Any],
                   preload: Sequence[str]) -> None:
    """torchrun's standalone launch (its agent, rendezvous and failure handling), the ranks forked."""
    import importlib
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: one thread per rank unless told otherwise
    for name in preload:  # only a matter of speed: a rank imports whatever is missing
        importlib.import_module(name)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="fork")
    elastic_launch(config, _forked_rank)(command, arguments)


def _forked_rank(command: Callable[[list[str]], Any], arguments: list[str]) -> None:
    """One forked rank: ``command(arguments)``, as a new interpreter would run ``camzoo ARGUMENTS``.

    A forked child inherits what a new interpreter would not: the launcher's torch thread count (set
    before OMP_NUM_THREADS was) and torchrun's signal handlers (Ctrl-C must reach the command as a
    KeyboardInterrupt, so that it says what was kept and exits 130)."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("SIGTERM", "SIGHUP", "SIGQUIT"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else 1)
    try:
        command(arguments)
    except SystemExit as done:  # click's way to finish; torchrun's failure is a non-zero exit code
        if done.code not in (0, None):
            raise
