"""``camzoo bench`` (run a grid, resumably) and ``camzoo report`` (rebuild outputs from a store)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..bench.plan import BenchPlan


def register(group: click.Group) -> None:
    group.add_command(bench_command)
    group.add_command(report_command)


@click.command("bench")
@click.option("--preset", type=click.Choice(["quick", "standard", "paper"]), default="quick", show_default=True,
              help="quick: 2-core CPU in minutes; standard: a GPU; paper: LFI-CAM's protocol on your CIFAR/STL copy.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file overriding the preset.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Results directory (default: results/<preset>).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Overrides the config's device (default auto).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as TOML and exit.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--html/--no-html", default=True, show_default=True,
              help="Also write report.html (tables, curves, every map of every image; one self-contained file).")
@click.option("--check", is_flag=True,
              help="Validate the whole config (datasets, models, training, eval, device), print the plan and exit.")
@click.option("--estimate/--no-estimate", "with_estimate", default=True, show_default=True,
              help="With --check: time a few seconds of the plan's work on this machine and print the estimated "
                   "wall time per phase.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this node (one device each), started as torchrun starts them.")
@click.option("--model", "model_name", help="Your trained model: a timm name, torchvision:NAME or package.module:factory "
              "(omit for camzoo model.pt checkpoints). Needs --checkpoint and --data.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(path_type=Path),
              help="A .pth / .safetensors state dict or a camzoo model.pt (repeatable: each is a seed, and "
                   "stability compares them). Loaded, never trained.")
@click.option("--data", "data_root", type=click.Path(path_type=Path),
              help="The image folder to score on (default layout: annotated, docs/datasets.md).")
@click.option("--dataset", "dataset_name", default="annotated", show_default=True,
              help="The --data folder's layout (`camzoo datasets list`).")
@click.option("--methods", "method_list", help="Comma-separated methods or selectors (default: @one-pass); "
              "the controls are always added.")
@click.option("--images", type=click.IntRange(min=1),
              help="Evaluation images: N of --data, taken class by class in proportion (seeded).")
@click.option("--image-size", type=click.IntRange(min=8), help="Side the --data images are resized to.")
@click.option("--output", help="Where your model's output holds the logits, as for camzoo explain: an index (tuple) "
              "or a key/attribute name (default: a tensor itself, a tuple's first item, a dict's or object's 'logits').")
def bench_command(preset: str, config_file: Path | None, out_dir: Path | None, device: str | None,
                  print_config: bool, no_progress: bool, html: bool, check: bool, with_estimate: bool, nproc: int,
                  model_name: str | None, checkpoints: tuple[Path, ...], data_root: Path | None, dataset_name: str,
                  method_list: str | None, images: int | None, image_size: int | None, output: str | None = None) -> None:
    """Train or load every model of the grid, explain, score, and write tables and plots.

    Every finished cell is committed to DIR/results.sqlite at once: rerunning the same command after
    an interruption skips finished cells and reuses trained checkpoints. With --checkpoint and --data
    it scores your trained models on your images instead, without training (--print-config shows
    the TOML that run uses).
    """
    from ..bench.config import resolve_config, to_toml
    from ..bench.sources import one_command_overrides

    try:
        overrides = one_command_overrides(model_name, checkpoints, data_root, dataset_name, method_list, images,
                                          image_size, output)
        if device:
            overrides["device"] = device
        config = resolve_config(preset, config_file, overrides)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from err
    if print_config:
        from ..bench.validate import shape_problems

        problems = shape_problems(config)
        if problems:
            raise click.UsageError("invalid benchmark config: " + "; ".join(problems))
        click.echo(to_toml(config), nl=False)
        return
    from ..bench.plan import ConfigError, build_plan

    out_dir = out_dir or Path("results") / config["preset"]
    if check:
        try:  # an earlier run's hashes of the input files are read, never written (--check writes nothing)
            plan = build_plan(config, world_size=nproc, cache_dir=out_dir, write_cache=False)
        except ValueError as err:
            raise click.ClickException(str(err)) from err
        click.echo(plan.text())
        if with_estimate:
            from ..bench.estimate import estimate

            click.echo(estimate(plan, nproc).text())
        return
    from ..bench.distributed import run_distributed, world_from_env

    worker = world_from_env()
    if worker is None:  # one bench per --out: a second one waits, then resumes (docs/cli.md)
        from ..bench.lock import run_lock

        click.get_current_context().with_resource(run_lock(out_dir, echo=click.echo))
    # one process: its plan, built once for the estimate and the run (several: rank 0 builds theirs)
    plan = _plan(config, out_dir) if worker is None and nproc == 1 else None
    seconds = _progress_estimate(config, nproc, worker is None and not no_progress, plan, out_dir)
    if nproc > 1 and worker is None:
        from . import run_on_ranks
        from ..bench.distributed import RANK_MODULES

        run_on_ranks(nproc, config["device"], preload=RANK_MODULES)
    from ..bench.report import write_report
    from ..bench.runner import BenchRunner
    from ..bench.store import StoreBusyError, StoreLayoutError

    try:
        if worker is None:
            runner = BenchRunner(plan, out_dir, progress=not no_progress, echo=click.echo, job_seconds=seconds)
            click.echo(f"camzoo bench: preset {config['preset']}, run {runner.run_id}, device {runner.device_label}, "
                       f"out {out_dir}")
            for note in plan.notes if plan is not None else ():  # images chosen, images left out and why
                click.echo(f"camzoo bench: {note}")
    except StoreBusyError as err:  # a runtime condition, not a usage error
        raise click.ClickException(str(err)) from err
    try:
        if worker is None:
            runner.run()
        else:
            runner = run_distributed(config, out_dir, worker, progress=not no_progress, echo=click.echo,
                                     job_seconds=seconds)
            if worker.rank != 0:
                return  # rank 0 merged the shards and writes the report
    except ConfigError as err:
        raise click.ClickException(f"{err}\nCells finished before are kept in {out_dir}: fix the config and rerun "
                                   "to resume.") from err
    except StoreLayoutError as err:  # --out holds a store of another layout: resuming cannot help
        raise click.ClickException(str(err)) from err
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished cells are kept in {out_dir / 'results.sqlite'} and trained models in "
                   f"{out_dir / 'models'}; rerun the same command to resume", err=True)
        raise SystemExit(130) from None
    except (ValueError, FileNotFoundError) as err:  # bad data roots, configs the trainer refuses, ...
        raise click.ClickException(f"{err}\nFinished cells are kept in {out_dir}; rerun to resume.") from err
    files = write_report(out_dir, runner.run_id, html=html)
    click.echo((out_dir / "summary.md").read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(str(out_dir / name) for name in files))
    _exit_if_incomplete(files)


def _exit_if_incomplete(files: dict) -> None:
    """A report of a run whose input files changed since says so in one line; one with missing cells ends
    with a line saying what is missing, and exit status 3 (docs/cli.md)."""
    from ..bench.missing import INCOMPLETE_EXIT

    changed = getattr(files, "changed", None)
    if changed:
        from ..bench.report import changed_line

        click.echo(f"camzoo: {changed_line(changed)}", err=True)
    missing = getattr(files, "missing", None)
    if missing:
        click.echo(f"camzoo: {missing.line()}", err=True)
        raise SystemExit(INCOMPLETE_EXIT)


def _plan(config: dict, out_dir: Path) -> BenchPlan:
    """The run's plan (the input files' hashes cached in ``out_dir``); a config that cannot run stops here,
    before anything is written."""
    from ..bench.plan import ConfigError, build_plan

    try:
        return build_plan(config, cache_dir=out_dir)
    except ConfigError as err:
        raise click.ClickException(f"{err}\nfix the config and rerun.") from err
    except ValueError as err:
        raise click.UsageError(str(err)) from err


def _progress_estimate(config: dict, nproc: int, launching: bool, plan: BenchPlan | None = None,
                       out_dir: Path | None = None) -> dict[str, float] | None:
    """Each model job's estimated seconds, for a progress bar whose ETA is the run's remaining time.

    The launching process probes the machine (camzoo.bench.estimate, a few seconds), says the
    estimate, and hands the numbers to its ranks through the environment; a rank reads them there.
    ``plan``: the run's own, where this process built it (else the estimate builds one).
    Only where a person watches the bar (stderr is a terminal): a log needs no ETA, and the probe
    would cost every scripted run its seconds. None: the bar counts jobs."""
    import json
    import os
    import sys

    from ..bench.estimate import JOB_SECONDS_ENV, duration, estimate

    if not launching:
        found = os.environ.get(JOB_SECONDS_ENV)
        return json.loads(found) if found else None
    if not sys.stderr.isatty():
        return None
    from ..bench.plan import build_plan

    try:
        found = estimate(plan or build_plan(config, world_size=nproc, cache_dir=out_dir), nproc)
    except ValueError:
        return None  # the run's own plan says what is wrong, below
    click.echo(f"camzoo bench: estimated ~{duration(found.total)} on {found.device_label} with --nproc {nproc} "
               "(camzoo bench --check shows each phase)")
    seconds = {job.label: job.total for job in found.jobs}
    os.environ[JOB_SECONDS_ENV] = json.dumps(seconds)
    return seconds


@click.command("report")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--run", "run_id", help="Run id to report (default: the latest run in the store).")
@click.option("--format", "formats", type=click.Choice(["md", "csv", "tex"]), multiple=True,
              help="Tables to write (repeatable; default: all three). csv: summary.csv, pairwise.csv and long.csv.gz "
                   "(one row per cell, metric and image).")
@click.option("--html", is_flag=True, help="Also write report.html: one self-contained page to explore the run.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Write the tables and plots here (default: DIRECTORY; needed for a store in a read-only place).")
def report_command(directory: Path, run_id: str | None, formats: tuple[str, ...], html: bool,
                   out_dir: Path | None = None) -> None:
    """Rebuild summary.md/.csv/.tex and the plots of DIRECTORY from its results store alone.

    A run with missing cells (a bench stopped before the end) is reported as far as it goes; the
    output says what is missing and the exit status is 3.
    """
    from ..bench.report import FORMATS, write_report

    try:
        files = write_report(directory, run_id, formats or FORMATS, html=html, out=out_dir)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from err
    if "summary.md" in files:
        click.echo((out_dir or directory).joinpath("summary.md").read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(str(path) for path in files.values()))
    _exit_if_incomplete(files)
