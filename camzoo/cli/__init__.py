"""The ``camzoo`` command: one click group; each sub-command lives in its own module here.

Why a group of our own: two failures can happen in any sub-command and must read the same everywhere
— a write that fails because the disk is full or the place is read-only or forbidden (one line naming
the file, the cause and what to do, exit 1; finished work is kept by each command's own atomic writes),
and Ctrl-C (exit 130, never click's "Aborted!" with exit 1, nor a KeyboardInterrupt traceback).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

import click

from .._version import __version__

EXIT_INTERRUPTED = 130


def interrupted() -> NoReturn:
    """Ctrl-C: one line and exit 130, at whatever moment it came."""
    click.echo("\ninterrupted (Ctrl-C); files written so far are kept", err=True)
    sys.exit(EXIT_INTERRUPTED)


class CamzooGroup(click.Group):
    """A click group that turns write failures (ENOSPC, EROFS, EACCES, ...) and Ctrl-C into one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        """Ctrl-C while the command line is parsed (before any command runs) also exits 130: click would
        print "Aborted!" and exit 1."""
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            interrupted()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted()
        except OSError as err:
            from ..io import describe_os_error  # here: camzoo.io imports torch, and --help must stay fast

            message = describe_os_error(err)
            if message is None:
                raise
            raise click.ClickException(f"{message} (files written before are kept)") from err


@click.group(cls=CamzooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="camzoo")
def main() -> None:
    """Class activation maps for CNN classifiers, and honest benchmarks of them."""


def command_line(ctx: click.Context, leave_out: Collection[str] = ()) -> list[str]:
    """The ``camzoo`` arguments that give ``ctx``'s command the parameters it has now (options only:
    every option that has a value, flags as given), e.g. for the ranks of ``--nproc``."""
    arguments = [ctx.command.name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, click.Option) or param.name in leave_out or value is None:
            continue
        if param.is_flag:
            if param.secondary_opts or value:
                arguments.append(param.opts[0] if value else param.secondary_opts[0])
            continue
        for item in value if param.multiple else [value]:
            arguments += [param.opts[0], str(item)]
    return arguments


def run_on_ranks(nproc: int, device: str, preload: Sequence[str] = ()) -> NoReturn:
    """``camzoo CMD ... --nproc N``: the current command with the same options on N ranks (torchrun's
    launch, camzoo.train.launch); exits with the group's status."""
    from ..train.launch import launch

    arguments = command_line(click.get_current_context(), leave_out=("nproc",))
    raise SystemExit(launch(nproc, arguments, device, command=functools.partial(main.main, prog_name="camzoo"),
                            preload=preload))


def _register() -> None:
    # Sub-command modules import torch lazily inside their commands, so `camzoo --help` stays fast.
    for module_name in ("methods", "explain", "datasets", "train", "bench"):
        module = __import__(f"{__name__}.{module_name}", fromlist=["register"])
        module.register(main)


_register()


def run() -> None:
    """The ``camzoo`` program (console script and ``python -m camzoo``): :data:`main`, and after Ctrl-C
    an exit that skips the interpreter's finalisation.

    Why: an interrupt that lands while torch is half-imported or busy made the interpreter's own
    teardown abort (exit -6) or re-raise SIGINT (exit -2) after the one-line message. Finished work is
    already on disk at that point: files are written atomically, results cells are committed in their
    own transactions, the commands' ``finally`` blocks have run, a lock dies with the process and a
    temporary is removed by the next run. In-process callers (tests' CliRunner) call :data:`main`.
    """
    try:
        main()
    except SystemExit as exit_:
        if exit_.code != EXIT_INTERRUPTED:
            raise
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_INTERRUPTED)
