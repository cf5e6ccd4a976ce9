"""``camzoo methods``: what ``--method`` (explain) and ``methods = [...]`` (bench) can name.

Why its own module: it reads the method registry only (no model, no images), so it stays apart from
the ``explain`` batch runner.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    group.add_command(methods_command)


@click.command("methods")
@click.option("--options", "show_options", is_flag=True,
              help="Also show each method's facts (family, cost, one pass) and the options --method-option takes.")
def methods_command(show_options: bool) -> None:
    """List the CAM methods camzoo knows (one line each, with the paper), then the reference
    (control) methods apart."""
    from ..methods import method_names
    from ..methods.registry import describe, method_facts

    width = max(map(len, method_names())) + 2

    def line(name: str) -> str:
        info = describe(name)
        text = f"  {name:{width}s}{info.summary}" + (f" [{info.paper}]" if info.paper else "")
        return text + (f"\n  {'':{width}s}{method_facts(name)}" if show_options else "")

    click.echo("methods:")
    for name in method_names(reference=False):
        click.echo(line(name))
    click.echo(f"  {'captum:<Name>':{width}s}any captum.attr attribution (IntegratedGradients, Saliency, Occlusion, "
               "LayerGradCam, ...), reduced to one map per image [Kokhlikyan et al. 2020]")
    click.echo("\nreference methods (controls for benchmark tables, not explanations):")
    for name in method_names(reference=True):
        click.echo(line(name))
