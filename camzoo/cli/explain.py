"""``camzoo methods`` and ``camzoo explain``: heat-maps for image files from the command line."""

from __future__ import annotations

from pathlib import Path

import click


def load_model_for_cli(name: str | None, checkpoint: Path | None, num_classes: int | None):
    """A camzoo checkpoint as saved (``--model`` not needed), or a timm model with optional local weights.

    Never downloads: a timm model without ``--checkpoint`` keeps its random initialisation.
    """
    import timm

    from ..io import load_torch
    from ..models.checkpoint import is_camzoo_checkpoint, model_from_checkpoint, validate_checkpoint

    payload = None
    if checkpoint is not None:
        try:
            payload = load_torch(checkpoint)
        except (ValueError, FileNotFoundError) as err:
            raise click.BadParameter(str(err), param_hint="--checkpoint") from err
        if is_camzoo_checkpoint(payload):
            try:
                return model_from_checkpoint(validate_checkpoint(payload, checkpoint), checkpoint)
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="--checkpoint") from err
    if name is None:
        raise click.UsageError("--model NAME is needed unless --checkpoint is a camzoo model (from camzoo train or bench)")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise click.BadParameter(f"{name!r} is not a timm model name.{hint}", param_hint="--model")
    state = payload
    if state is not None:
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
            raise click.BadParameter(f"{checkpoint} does not hold a state_dict of tensors", param_hint="--checkpoint")
        if num_classes is None:
            head = timm.create_model(name, pretrained=False).pretrained_cfg.get("classifier", "fc")
            head_weight = state.get(f"{head}.weight")
            num_classes = int(head_weight.shape[0]) if head_weight is not None else None
    model = timm.create_model(name, pretrained=False, **({} if num_classes is None else {"num_classes": num_classes}))
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise click.BadParameter(
                f"{checkpoint} does not fit timm model {name!r}: {str(err).splitlines()[0]}", param_hint="--checkpoint"
            ) from err
    return model.eval()


def register(group: click.Group) -> None:
    group.add_command(methods_command)
    group.add_command(explain_command)


@click.command("methods")
def methods_command() -> None:
    """List the CAM methods camzoo knows."""
    from ..api import methods

    for name in methods():
        click.echo(name)


@click.command("explain")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", help="A timm model name, e.g. resnet50 (not needed for a camzoo checkpoint).")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="A camzoo model (model.pt from camzoo train/bench), or local weights (.pth/.safetensors) for --model.")
@click.option("--num-classes", type=int, help="Number of classes, if it cannot be read from the checkpoint.")
@click.option("--method", default="gradcam", show_default=True, help="See `camzoo methods`.")
@click.option("--target", type=int, help="Class to explain (default: the predicted class).")
@click.option("--layer", help="Dotted module name to explain (default: the final conv feature map).")
@click.option("--image-size", type=int, help="Resize images to this size (default: the model's input size).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory for overlay PNGs.")
def explain_command(
    images: tuple[Path, ...],
    model_name: str | None,
    checkpoint: Path | None,
    num_classes: int | None,
    method: str,
    target: int | None,
    layer: str | None,
    image_size: int | None,
    out_dir: Path,
) -> None:
    """Write one overlay PNG per IMAGE and print the explained class and its score."""
    import torch

    from ..api import explain
    from ..inputs import load_image
    from ..io import atomic_write
    from ..methods import get_method

    try:
        get_method(method)
        pictures = [load_image(path) for path in images]
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from err
    model = load_model_for_cli(model_name, checkpoint, num_classes)
    if checkpoint is None:
        click.echo("warning: no --checkpoint given; the model has random weights, so its maps mean nothing", err=True)
    if torch.cuda.is_available():
        model = model.cuda()
    try:
        result = explain(model, pictures, method=method, target=target, layer=layer, image_size=image_size)
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(images):
        out_path = out_dir / f"{path.stem}_{result.method}.png"
        atomic_write(out_path, lambda tmp, i=i: result.overlay(i).save(tmp, format="PNG"))
        click.echo(f"{path}: class {result.label(i)} (p={float(result.scores[i]):.3f}) -> {out_path}")
