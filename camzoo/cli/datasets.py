"""``camzoo datasets``: list the datasets, check a local copy, and preview images with their annotations."""

from __future__ import annotations

import click

from .checks import check_writable
from .options import parse_options


def _load(name: str, split: str, root: str | None, image_size: int | None, options: dict[str, object]):
    from ..data import DatasetError, load

    try:
        return load(name, split, root=root, image_size=image_size, **options)
    except (DatasetError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err


def register(group: click.Group) -> None:
    @group.group("datasets")
    def datasets() -> None:
        """Built-in and on-disk datasets."""

    @datasets.command("list")
    def list_cmd() -> None:
        """Every dataset camzoo can load, its splits, annotations and expected layout."""
        from ..data import DATASETS

        for name in sorted(DATASETS):
            d = DATASETS[name]
            ann = ", ".join(d.annotations) or "labels only"
            click.echo(f"{name:12s} {d.summary}")
            click.echo(f"{'':12s} splits: {', '.join(d.splits)}; annotations: {ann}")
            if d.layout:
                click.echo(f"{'':12s} root holds: {d.layout}")

    @datasets.command("check")
    @click.argument("name")
    @click.option("--root", type=click.Path(), default=None, help="Local copy (cache dir for 'shapes').")
    @click.option("--image-size", type=int, default=None, help="Side of the returned images.")
    @click.option("--option", "-o", "options", multiple=True, help="Loader option KEY=VALUE, e.g. num_classes=5.")
    @click.option("--verify/--no-verify", default=False,
                  help="Also read every item, so a bad image, box or mask is reported now, and list the "
                       "images whose box or mask covers no pixel at --image-size.")
    def check_cmd(name: str, root: str | None, image_size: int | None, options: tuple[str, ...], verify: bool) -> None:
        """Split sizes, class count and which annotations exist for NAME."""
        from ..data import DatasetError, info

        try:
            entry = info(name)
        except ValueError as err:
            raise click.ClickException(str(err)) from err
        opts = parse_options(options, "--option", "num_classes=5")
        loaded = 0
        for split in entry.splits:
            try:
                ds = _load(name, split, root, image_size, opts)
            except click.ClickException as err:
                if "for split" not in err.message:  # only a split folder that is absent is not fatal
                    raise
                click.echo(f"{name}/{split}: not present ({err.message})")
                continue
            loaded += 1
            click.echo(f"{name}/{split}: {len(ds)} images, {len(ds.classes)} classes, {ds.image_size}px, "
                       f"annotations: {', '.join(ds.annotations) or 'none'}")
            skipped, dropped = getattr(ds, "skipped", None) or [], getattr(ds, "unannotated", None) or []
            if skipped:  # datasets that leave unreadable files out ("annotated") list them
                shown = "; ".join(f"{path} ({why})" for path, why in skipped[:3])
                click.echo(f"{name}/{split}: skipped {len(skipped)} unreadable image(s): {shown}"
                           f"{' ...' if len(skipped) > 3 else ''}")
            if dropped:
                note = (ds.dropped_note("-o unannotated=error") if callable(getattr(ds, "dropped_note", None))
                        else f"left out {len(dropped)} image(s) without box or mask, e.g. {dropped[0]}")
                click.echo(f"{name}/{split}: {note}")
            if verify:
                from ..data.coverage import vanished

                try:
                    for i in range(len(ds)):
                        ds[i]
                    empty = vanished(ds, range(len(ds)), ds.image_size)
                except DatasetError as err:
                    raise click.ClickException(str(err)) from err
                click.echo(f"{name}/{split}: all {len(ds)} items read")
                if empty:  # the dataset reads, but its localisation metrics cannot score these at this size
                    click.echo(f"{name}/{split}: {empty.text()}")
        if not loaded:
            raise click.ClickException(f"{name}: no split found under {root!r}")

    @datasets.command("preview")
    @click.argument("name")
    @click.option("--out", required=True, help="PNG file to write (its folder is created if missing).")
    @click.option("--root", type=click.Path(), default=None)
    @click.option("--split", default="train", show_default=True)
    @click.option("--image-size", type=int, default=None)
    @click.option("--rows", type=int, default=4, show_default=True)
    @click.option("--cols", type=int, default=8, show_default=True)
    @click.option("--scale", type=int, default=1, show_default=True, help="Nearest-neighbour upscale factor.")
    @click.option("--annotate/--no-annotate", default=True, show_default=True,
                  help="Outline masks and draw boxes.")
    @click.option("--option", "-o", "options", multiple=True, help="Loader option KEY=VALUE.")
    def preview_cmd(name: str, out: str, root: str | None, split: str, image_size: int | None, rows: int,
                    cols: int, scale: int, annotate: bool, options: tuple[str, ...]) -> None:
        """Write a grid of the first images of NAME (with mask outlines and boxes) to --out."""
        from pathlib import Path

        from ..data import DatasetError
        from ..data.preview import preview_grid

        if rows < 1 or cols < 1 or scale < 1:
            raise click.BadParameter("rows, cols and scale must be >= 1")
        check_writable(Path(out), "--out", is_dir=False)
        ds = _load(name, split, root, image_size, parse_options(options, "--option", "num_images=40"))
        try:
            path = preview_grid(ds, out, rows=rows, cols=cols, scale=scale, annotate=annotate)
        except DatasetError as err:  # a bad image, box or mask among the previewed items: as `check --verify` says it
            raise click.ClickException(str(err)) from err
        except OSError as err:
            raise click.ClickException(f"cannot write {out!r}: {err.strerror or err}") from err
        click.echo(f"wrote {path}")
