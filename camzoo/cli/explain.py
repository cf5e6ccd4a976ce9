"""``camzoo explain``: heat-maps for image files and folders from the command line.

Why a batch runner here and not a shell loop: a folder of photos is decoded one file at a time
(an unreadable file is reported and skipped), explained in batches on the device with every
requested method, and written as overlays at each photo's own size and aspect, with stable,
unique names that mirror the input tree, plus a manifest CSV a script can read.

Exit codes: 2 for usage errors (bad option, missing input, unknown model or method), 1 for
runtime failures (some images unreadable, the model failing mid-run), 0 when every image was
explained.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import click

from .checks import check_writable, resolve_device_option
from .options import parse_options
from .tasks import DEFAULT_SCORE, TASKS, TaskPlan

DEFAULT_MAX_BOXES = 10

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("input", "method", "layer", "target", "target_name", "score", "width", "height", "overlay", "map")
DETECTION_COLUMNS = ("box", "box_score")  # added for --task detection: the explained box, the detector's score


def load_model_for_cli(name: str | None, checkpoint: Path | None, num_classes: int | None,
                       model_options: dict[str, Any] | None = None, output: int | str | None = None):
    """camzoo.models.loading.load_any_model, its errors as click errors on the option at fault."""
    from ..models.loading import ModelSpecError, load_any_model

    try:
        return load_any_model(name, checkpoint, num_classes, model_options or None, output=output)
    except ModelSpecError as err:
        if err.param == "model" and name is None:
            raise click.UsageError("--model NAME is needed unless --checkpoint is a camzoo model "
                                   "(from camzoo train or bench)") from err
        hint = "--model-option" if err.param == "factory-kwargs" else f"--{err.param}"
        raise click.BadParameter(str(err), param_hint=hint) from err


def register(group: click.Group) -> None:
    group.add_command(explain_command)


def _parse_targets(texts: Sequence[str], count: int, class_names: Sequence[str] | None,
                   num_outputs: int | None, task: str = "classification") -> list[int] | None:
    """--target values -> one class index per image (None: the predicted class; for a detector,
    every detected box's).

    One value applies to every image; otherwise give exactly one per image, in the order the images
    are listed (folders and globs expanded, sorted). Values are indices or class names; a
    detector's 0 is its background class, which it never detects."""
    if not texts:
        return None
    if len(texts) not in (1, count):
        raise click.BadParameter(f"got {len(texts)} targets for {count} images; give one target for all images, or "
                                 "one per image in the order they are listed (folders and globs expanded, sorted)",
                                 param_hint="--target")
    names = [str(n) for n in class_names] if class_names else None
    indices = []
    for text in texts:
        if names and text in names:
            indices.append(names.index(text))
        elif text.lstrip("-").isdigit():
            indices.append(int(text))
        elif names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise click.BadParameter(f"{text!r} is not a class of this model; classes: {shown}", param_hint="--target")
        else:
            raise click.BadParameter(f"{text!r} is a class name, but this model has no class names; give a class "
                                     "index", param_hint="--target")
        first = 1 if task == "detection" else 0
        if indices[-1] < first or (num_outputs is not None and indices[-1] >= num_outputs):
            valid = f"{first}..{num_outputs - 1}" if num_outputs is not None else f">= {first}"
            background = "; 0 is a detector's background class" if task == "detection" else ""
            known = f" for a model with {num_outputs} classes" if num_outputs is not None else ""
            raise click.BadParameter(f"target {indices[-1]} is out of range{known} (valid: {valid}{background})",
                                     param_hint="--target")
    return indices * count if len(indices) == 1 else indices


def _probe(model: Any, explainers: list[Any], size: tuple[int, int], device: Any,
           method_options: dict[str, Any] | None = None, task: str = "classification") -> int | None:
    """Run the model and every method once on a blank image: the class count (None: a detector
    that does not say), or a usage error when the model cannot run at ``size`` or a method cannot
    explain it (e.g. a --layer that is not a feature map, or a --method-option it does not take) —
    before any file is read."""
    import torch

    from ..api import explain
    from ..inputs import model_in_channels
    from ..methods.objectives import is_dense_output
    from ..methods.outputs import forward_raw, logits_of
    from .tasks import class_count, outputs_of, probe_target, quiet_probe

    blank = torch.zeros(1, model_in_channels(model), *size, device=device)
    selector = explainers[0].output if explainers else None
    try:
        with torch.no_grad():
            raw = forward_raw(model.eval(), blank) if task == "classification" else None
    except (ValueError, TypeError, MemoryError, RuntimeError, KeyError) as err:
        raise click.UsageError(f"the model cannot run at {size[0]}x{size[1]} px: {err}") from err
    try:  # the model ran: what is wrong now is how its output is read, not the image size
        with torch.no_grad():
            if task == "classification":
                if selector is None and is_dense_output(raw):
                    raise click.UsageError("the model returns a segmenter's or a detector's output, not class logits; "
                                           "pass --task segmentation or --task detection")
                outputs = int(logits_of(raw, model, blank, selector).shape[1])
            else:
                outputs = class_count(model, task, outputs_of(model, blank, selector))
    except (ValueError, TypeError, MemoryError, RuntimeError, KeyError) as err:
        where = "" if task == "classification" else f" at {size[0]}x{size[1]} px"
        message = str(err).replace("pass output=", "pass --output ")  # the API's keyword is this CLI's option
        raise click.UsageError(f"reading the model's output{where}: {message}") from err
    target = probe_target(task, size, device)
    for explainer in explainers:
        try:
            if method_options:  # camzoo.explain checks the options against the method's own
                quiet_probe(lambda e=explainer: explain(
                    model, blank, method=e.name, layer=e._layer_spec, method_options=method_options, target=target,
                    **({"output": e.output} if e.output is not None else {})))
            else:
                quiet_probe(lambda e=explainer: e(blank, target))
        except (ValueError, TypeError, RuntimeError, FloatingPointError, MemoryError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if method_options:
                raise click.BadParameter(f"method {explainer.name!r} with {method_options}: {first}",
                                         param_hint="--method-option") from err
            hint = "; pass its options with --method-option KEY=VALUE" if "argument" in first else ""
            raise click.UsageError(f"method {explainer.name!r} cannot explain this model: {first}{hint}") from err
    return outputs


@click.command("explain")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for overlays, maps and manifest.csv (created if missing).")
@click.option("--model", "model_name",
              help="timm name (resnet50) or torchvision:NAME (torchvision:resnet18); not needed for a camzoo checkpoint.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="A camzoo model (model.pt from camzoo train/bench), or local weights (.pth/.safetensors) for --model.")
@click.option("--num-classes", type=int, help="Classifier size, if it cannot be read from the checkpoint (>= 1).")
@click.option("--model-option", "model_option_texts", multiple=True, metavar="KEY=VALUE",
              help="An argument of the model's builder, e.g. min_size=512 or box_score_thresh=0.3 (torchvision "
                   "detectors); repeatable.")
@click.option("--task", type=click.Choice(TASKS),
              help="What the model does (default: the model's own task attribute, else classification).")
@click.option("--mask", "mask_paths", multiple=True, type=click.Path(path_type=Path),
              help="Segmentation: the region to explain, a picture of the photo (nonzero = inside); once for all "
                   "photos or once per photo (default: where the model predicts --target).")
@click.option("--box", "box_text", metavar="X0,Y0,X1,Y1",
              help="Detection: explain this box (in the photo's pixels) of class --target, instead of the detected ones.")
@click.option("--score", type=click.FloatRange(min=0.0),
              help=f"Detection: explain every detected box scoring at least this [default: {DEFAULT_SCORE}].")
@click.option("--max-boxes", type=click.IntRange(min=1),
              help=f"Detection: explain at most this many boxes per photo, the best first [default: {DEFAULT_MAX_BOXES}].")
@click.option("--method", "methods", multiple=True, default=("gradcam",), show_default=True,
              help="CAM method, see `camzoo methods`; repeat for several.")
@click.option("--target", "targets", multiple=True,
              help="Class index or name to explain (default: the predicted class; detection: every detected box's); "
                   "once for all images, or once per image. Detection: --box's class, or only this class's boxes.")
@click.option("--layer", "layers", multiple=True,
              help="Dotted module name to explain; repeat to fuse several (default: chosen per model family).")
@click.option("--output", "output",
              help="Where the model's output holds the logits: an index (tuple) or a key/attribute name "
                   "(default: a tensor itself, a tuple's first item, a dict's 'logits').")
@click.option("--image-size", type=click.IntRange(min=1),
              help="Side the model sees (default: the model's input size, as camzoo.explain; a model that declares "
                   "none, e.g. a detector or your own factory's: each photo's own).")
@click.option("--max-size", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Longest side kept of each photo (larger ones are downscaled, aspect kept); 0: no limit.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images per batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True, help="Heat-map opacity.")
@click.option("--colormap", default="jet", show_default=True, help="jet, or a matplotlib colormap (viridis, inferno, ...).")
@click.option("--save-maps", is_flag=True, help="Also write each map as float16 .npy at the photo's size.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--method-option", "method_option_texts", multiple=True, metavar="KEY=VALUE",
              help="An option of the method(s), value a number, Python literal, JSON or text (docs/cli.md), "
                   "e.g. sliding_window_shapes=(3,8,8); "
                   "repeatable; applies to every --method.")
def explain_command(inputs: tuple[str, ...], out_dir: Path, model_name: str | None, checkpoint: Path | None,
                    num_classes: int | None, methods: tuple[str, ...], targets: tuple[str, ...], layers: tuple[str, ...],
                    output: str | None,
                    image_size: int | None, max_size: int, batch_size: int, device: str, alpha: float, colormap: str,
                    save_maps: bool, progress: bool | None, method_option_texts: tuple[str, ...] = (),
                    model_option_texts: tuple[str, ...] = (), task: str | None = None,
                    mask_paths: tuple[Path, ...] = (), box_text: str | None = None, score: float | None = None,
                    max_boxes: int | None = None) -> None:
    """Explain INPUTS (image files, folders searched recursively, glob patterns) and write one
    overlay PNG per image and method to --out, mirroring the input tree, plus manifest.csv.

    A segmenter's maps explain --target over a region, a detector's one box each (every detected
    box scoring at least --score, or the --box given): see docs/cli.md."""
    from ..explanation import colormap_function
    from ..inputs import collect_image_files, output_names
    from ..methods import get_method
    from ..methods.outputs import model_class_names
    from ..modelutil import model_input_size
    from .tasks import PROBE_SIZE, TaskPlan, check_box_inside, check_task_options, parse_box, read_mask, resolve_task

    try:
        classes = list(dict.fromkeys(get_method(m) for m in methods))  # a method named twice runs once
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--method") from err
    for cls in classes:
        if cls.needs_ground_truth:
            raise click.BadParameter(f"method {cls.name!r} draws the ground truth and needs masks or boxes; the CLI "
                                     "explains plain images (use camzoo.explain(..., ground_truth=...))", param_hint="--method")
    try:
        colormap_function(colormap)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--colormap") from err
    method_options = parse_options(method_option_texts, "--method-option", "sliding_window_shapes=(3,8,8) or n_steps=16")
    model_options = parse_options(model_option_texts, "--model-option", "min_size=512")
    box = parse_box(box_text)
    masks = [read_mask(path) for path in mask_paths]
    _check_out_is_not_an_input(out_dir, inputs)
    skipped: list[tuple[Path, str]] = []
    try:  # the --out folder is never read: overlays of a previous run are not explained again
        files = collect_image_files(inputs, exclude=[out_dir], skipped=skipped)
    except FileNotFoundError as err:
        raise click.UsageError(str(err)) from err
    check_writable(out_dir, "--out", is_dir=True)
    torch_device = resolve_device_option(device)
    selector = int(output) if output is not None and output.lstrip("-").isdigit() else output
    model = load_model_for_cli(model_name, checkpoint, num_classes, model_options, selector)
    if checkpoint is None:
        click.echo("warning: no --checkpoint given; the model has random weights, so its maps mean nothing", err=True)
    model = model.to(torch_device).eval()
    task = resolve_task(task, model)
    check_task_options(task, masks=masks, box=box, targets=targets, score=score, max_boxes=max_boxes)
    if masks and len(masks) not in (1, len(files)):
        raise click.BadParameter(f"got {len(masks)} masks for {len(files)} images; give one mask for all images, or one "
                                 "per image in the order they are listed", param_hint="--mask")
    if box is not None:
        check_box_inside(box, files)
    # camzoo.explain's rule (modelutil.model_input_size): the model's input size, else each photo's own
    size = (image_size, image_size) if image_size else model_input_size(model)
    try:
        layer = None if not layers else layers[0] if len(layers) == 1 else list(layers)
        options = {"output": selector} if selector is not None else {}
        explainers = [cls(model, layer=layer, **options, **method_options) for cls in classes]
    except TypeError as err:
        if method_options:
            raise click.BadParameter(f"{err}", param_hint="--method-option") from err
        raise click.BadParameter(f"a --method does not accept --output: {err}", param_hint="--output") from err
    except ValueError as err:
        hint = "--method-option" if method_options and any(k in str(err) for k in method_options) else None
        raise click.BadParameter(str(err), param_hint=hint or ("--layer" if layer else "--method")) from err
    num_outputs = _probe(model, explainers, size or PROBE_SIZE, torch_device, method_options, task)
    per_image_targets = _parse_targets(targets, len(files), model_class_names(model), num_outputs, task)
    plan = TaskPlan(task, per_image_targets, masks=None if not masks else masks * len(files) if len(masks) == 1 else masks,
                    box=box, score=DEFAULT_SCORE if score is None else score, max_boxes=max_boxes or DEFAULT_MAX_BOXES,
                    selector=explainers[0].output if explainers else None)
    # a photo explained at its own size (no fixed input size) is a batch of its own
    _run(files, output_names(files), explainers, model, size, plan, out_dir,
         max_size=max_size or None, batch_size=batch_size if size else 1, alpha=alpha, colormap=colormap,
         save_maps=save_maps, progress=sys.stderr.isatty() if progress is None else progress, skipped=skipped)


def _check_out_is_not_an_input(out_dir: Path, inputs: Sequence[str]) -> None:
    """--out may lie inside an input folder (it is then not read), not be one: the next run would
    explain this run's overlays."""
    import glob

    from ..io import display_path

    out = out_dir.resolve()
    for spec in inputs:
        path = Path(spec)
        if glob.has_magic(spec) and not path.exists():
            parts = path.parts
            path = Path(*parts[:next(i for i, part in enumerate(parts) if glob.has_magic(part))] or ["."])
        if path.is_dir() and path.resolve() == out:
            raise click.BadParameter(f"{display_path(out_dir)!r} is also an input folder ({display_path(spec)!r}): the "
                                     "next run would explain these overlays; give another --out, e.g. "
                                     f"{display_path(out_dir / 'maps')!r}", param_hint="--out")


def _run(files: list[Path], stems: list[Path], explainers: list[Any], model: Any, size: tuple[int, int] | None,
         plan: TaskPlan, out_dir: Path, *, max_size: int | None, batch_size: int, alpha: float,
         colormap: str, save_maps: bool, progress: bool, skipped: Sequence[tuple[Path, str]] = ()) -> None:
    """Decode, explain and write ``files`` batch by batch; unreadable files are skipped and listed.
    ``plan`` says what each photo's maps explain (one per photo, or one per detected box) and what
    their overlays draw; ``size`` None explains each photo at its own size.

    Paths are printed through ``display_path`` (a file name that is not UTF-8 would otherwise stop the
    run with UnicodeEncodeError after its overlay is written); the manifest keeps such names' raw bytes."""
    import warnings

    import numpy as np
    from tqdm import tqdm

    from ..inputs import FrameWarning, open_image, prepare_images
    from ..io import atomic_write, describe_os_error, display_path, save_npy, write_bytes

    rows: list[dict[str, Any]] = []
    failed: list[tuple[Path, str]] = list(skipped)
    bar = tqdm(total=len(files), unit="img", file=sys.stderr, disable=not progress, desc="explain")

    def write_manifest() -> None:
        text = io.StringIO()
        columns = MANIFEST_COLUMNS + (DETECTION_COLUMNS if plan.task == "detection" else ())
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_bytes(out_dir / MANIFEST_NAME, text.getvalue().encode("utf-8", "surrogateescape"))

    try:
        for start in range(0, len(files), batch_size):
            pictures, indices, own_sizes = [], [], []
            for k in range(start, min(start + batch_size, len(files))):
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", FrameWarning)
                        picture, own = open_image(files[k], max_size)
                    pictures.append(picture)
                    own_sizes.append(own)
                    indices.append(k)
                    for warning in caught:
                        if issubclass(warning.category, FrameWarning):
                            bar.write(f"note: {warning.message}", file=sys.stderr)
                except (ValueError, FileNotFoundError) as err:  # decoding files one by one: report, skip, go on
                    failed.append((files[k], str(err)))
                    bar.write(f"skipped {display_path(files[k])}: {err}", file=sys.stderr)
            if pictures:
                batch = prepare_images(pictures, model, image_size=size, max_size=max_size)
                work = plan.work(model, batch, indices, own_sizes, lambda k, text: bar.write(
                    f"{display_path(files[k])}: {text}", file=sys.stdout))
                for explainer in explainers if work.items else ():
                    with warnings.catch_warnings(record=True) as caught:  # a box no detection matches: one line
                        result = explainer(work.images, work.targets)
                    where = f"{display_path(files[indices[0]])}: " if len(indices) == 1 else ""
                    for text in dict.fromkeys(str(w.message) for w in caught):
                        bar.write(f"note: {where}{result.method}: {text}", file=sys.stderr)
                    for n, item in enumerate(work.items):
                        picture, stem, k = pictures[item.image], stems[indices[item.image]], indices[item.image]
                        overlay_path = out_dir / stem.parent / f"{stem.name}_{result.method}{item.suffix}.png"
                        drawn = {"box": item.box, "outline": item.outline}
                        atomic_write(overlay_path, lambda tmp, r=result, n=n, p=picture, d=drawn:
                                     r.overlay(n, alpha, colormap, image=p, **d).save(tmp, format="PNG"))
                        map_name = ""
                        if save_maps:
                            map_path = overlay_path.with_suffix(".npy")
                            save_npy(map_path, result.map_at(n, (picture.height, picture.width)).numpy().astype(np.float16))
                            map_name = map_path.relative_to(out_dir).as_posix()
                        score = float(result.scores[n])
                        box = "" if item.photo_box is None else ",".join(f"{v:.1f}" for v in item.photo_box)
                        box_score = "" if item.box_score is None else f"{item.box_score:.6g}"
                        rows.append({"input": str(files[k]), "method": result.method, "layer": result.layer or "",
                                     "target": int(result.targets[n]), "target_name": result.label(n),
                                     "score": f"{score:.6g}", "width": picture.width, "height": picture.height,
                                     "overlay": overlay_path.relative_to(out_dir).as_posix(), "map": map_name,
                                     "box": box, "box_score": box_score})
                        what = (f"class {result.label(n)} (p={score:.3f})" if plan.task == "classification" else
                                f"class {result.label(n)} region (score {score:.3g})" if plan.task == "segmentation"
                                else f"box {item.suffix[4:]} class {result.label(n)} [{box}]"
                                f"{'' if item.box_score is None else f' detected with score {item.box_score:.3f}'}"
                                f" (target {score:.3g})")
                        bar.write(f"{display_path(files[k])}: {result.method} {what} -> {display_path(overlay_path)}",
                                  file=sys.stdout)
            bar.update(min(start + batch_size, len(files)) - start)
    except KeyboardInterrupt:
        write_manifest()
        click.echo(f"interrupted: {len(rows)} overlays written so far are kept in {display_path(out_dir)} (listed in "
                   f"{MANIFEST_NAME}); rerun to redo the rest", err=True)
        raise SystemExit(130) from None
    except (ValueError, TypeError, MemoryError, FloatingPointError, OSError, RuntimeError) as err:
        disk = describe_os_error(err) if isinstance(err, OSError) else None
        try:
            write_manifest()
            kept = f"{len(rows)} overlays written so far are in {display_path(out_dir)}, listed in {MANIFEST_NAME}"
        except OSError:
            kept = f"{len(rows)} overlays written so far are in {display_path(out_dir)}; {MANIFEST_NAME} could not be written"
        first = disk or (str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise click.ClickException(f"{first[:300]} (stopped; {kept}; rerunning rewrites the same files)") from err
    finally:
        bar.close()
    write_manifest()
    total = len(files) + len(skipped)
    done = total - len(failed)
    click.echo(f"explained {done} of {total} images with {', '.join(e.name for e in explainers)}; "
               f"{len(rows)} overlays{' and maps' if save_maps else ''} in {display_path(out_dir)} (see {MANIFEST_NAME})")
    if failed:
        click.echo(f"{len(failed)} of {total} images could not be read and were skipped:", err=True)
        for path, reason in failed:
            click.echo(f"  {display_path(path)}: {reason}", err=True)
        raise SystemExit(1)
