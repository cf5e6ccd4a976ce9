"""This process's place in a torchrun group, and the group itself: one home for what ``camzoo
bench`` and ``camzoo train`` ranks both need (rank, world size, local rank, the device of a rank,
joining the group, a barrier).

Why one module: the bench and the trainer each had a copy, with different timeouts and different
rules for ``cuda:N``; a rank that reads its place or device differently from its peers hangs the
group instead of failing.

The rules:

* A process is a rank when torchrun (or ``--nproc``, camzoo.train.launch) set ``RANK`` and
  ``WORLD_SIZE`` with a world size above 1; ``LOCAL_RANK`` (default 0) is its index on its node. A
  value that is not an integer, or a rank outside the world, is a :class:`WorldError`.
* A rank's device: ``cpu``, or ``auto`` without CUDA, is the CPU (gloo); ``cuda`` or ``auto`` with
  CUDA is ``cuda:LOCAL_RANK`` (NCCL), one GPU per rank; ``cuda:N`` is kept as given (one rank per
  node pinned to one GPU). Every name goes through :func:`camzoo.modelutil.resolve_device`.
* One timeout policy for every collective (barriers, all-reduces, broadcasts):
  ``CAMZOO_DIST_TIMEOUT_HOURS`` hours (default 48; a positive number, fractions allowed). Why so
  long: a bench rank waits at the final barrier for the slowest rank's whole share of the grid,
  hours on a large one; a rank that dies is caught at once anyway, since torchrun's agent stops the
  group when any process exits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

from .modelutil import resolve_device

TIMEOUT_VARIABLE = "CAMZOO_DIST_TIMEOUT_HOURS"
DEFAULT_TIMEOUT_HOURS = 48.0


class WorldError(ValueError):
    """The torchrun environment or a rank's device cannot be used; the message says which variable."""


@dataclass(frozen=True)
class Place:
    """Where this process sits in its torchrun group."""

    rank: int
    world_size: int
    local_rank: int = 0


def _integer(environ: Mapping[str, str], name: str, default: str | None = None) -> int:
    text = environ.get(name, default)
    try:
        return int(str(text).strip())
    except ValueError:
        raise WorldError(f"{name}={text!r} is not an integer (torchrun sets it; unset it to run one process)") from None


def place_from_env(environ: Mapping[str, str] | None = None) -> Place | None:
    """This process's place, read from torchrun's variables; None when it is not one of several ranks."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    rank, size = _integer(environ, "RANK"), _integer(environ, "WORLD_SIZE")
    local = _integer(environ, "LOCAL_RANK", "0")
    if size < 1:
        raise WorldError(f"WORLD_SIZE={size} must be at least 1")
    if size == 1:
        return None
    if not 0 <= rank < size:
        raise WorldError(f"RANK={rank} is outside a world of WORLD_SIZE={size} ranks (0..{size - 1})")
    if local < 0:
        raise WorldError(f"LOCAL_RANK={local} must be at least 0")
    return Place(rank, size, local)


def rank_device(requested: str, local_rank: int | None = None) -> torch.device:
    """The device of a rank asked for ``requested`` (see the module docstring); ``local_rank``:
    default ``LOCAL_RANK``. A CUDA device that does not exist is a :class:`WorldError`."""
    try:
        device = resolve_device(requested)
    except ValueError as err:
        raise WorldError(str(err)) from None
    if device.type != "cuda" or device.index is not None:
        return device
    local = _integer(os.environ, "LOCAL_RANK", "0") if local_rank is None else local_rank
    count = torch.cuda.device_count()
    if not 0 <= local < count:
        raise WorldError(f"LOCAL_RANK={local} has no GPU of its own: torch sees {count} CUDA device(s) on this node; "
                         "start at most that many ranks per node, or use the CPU")
    return torch.device("cuda", local)


def timeout() -> timedelta:
    """How long a collective waits for the other ranks: the one policy of the module docstring."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return timedelta(hours=DEFAULT_TIMEOUT_HOURS)
    try:
        hours = float(text)
    except ValueError:
        hours = float("nan")
    if not 0 < hours < 1e6:  # also refuses nan and inf
        raise WorldError(f"{TIMEOUT_VARIABLE}={text!r} must be a positive number of hours (default "
                         f"{DEFAULT_TIMEOUT_HOURS:g})")
    return timedelta(hours=hours)


def join(device: torch.device) -> None:
    """Join the process group of torchrun's environment on ``device`` (a rank's, from
    :func:`rank_device`): NCCL on CUDA, else gloo, with the one :func:`timeout`."""
    import torch.distributed as dist

    wait = timeout()  # before anything starts: a bad value fails this rank alone, at once
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=wait)


def current() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(device: torch.device | str | None = None) -> None:
    """Wait for every rank of the group (a no-op without one); on CUDA, on ``device``'s GPU."""
    import torch.distributed as dist

    if current()[1] <= 1:
        return
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        dist.barrier(device_ids=[device.index or 0])
    else:
        dist.barrier()
