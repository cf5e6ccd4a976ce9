"""The ``camzoo`` command: one click group; each sub-command lives in its own module here."""

from __future__ import annotations

import click

from .._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="camzoo")
def main() -> None:
    """Class activation maps for CNN classifiers, and honest benchmarks of them."""


def _register() -> None:
    # Sub-command modules import torch lazily inside their commands, so `camzoo --help` stays fast.
    for module_name in ("explain", "datasets", "train", "bench"):
        module = __import__(f"{__name__}.{module_name}", fromlist=["register"])
        module.register(main)


_register()
