"""``camzoo train``: train a baseline, ABN, LFI-CAM, segmenter or detector model on a camzoo dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .checks import check_writable, resolve_device_option
from .options import parse_options


@click.command("train")
@click.option("--kind", required=True,
              help="Model kind: baseline, abn, lfi, segmenter (needs a dataset with class maps, e.g. scenes), detector "
                   "(needs per-object boxes, e.g. scenes), or any registered kind (camzoo.models.kind_names()).")
@click.option("--backbone", default="resnet20", show_default=True, help="CIFAR ResNet (resnet8/20/56/110) or timm CNN name.")
@click.option("--dataset", "dataset_name", default="shapes", show_default=True, help="Dataset name (camzoo.data).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Where the dataset lives / is generated.")
@click.option("--image-size", type=int, default=None, help="Image size passed to the dataset loader.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output directory (checkpoints, log).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "step", "constant"]), default="cosine", show_default=True)
@click.option("--warmup", type=float, default=0.0, show_default=True, help="Fraction of the run with a linear lr warm-up.")
@click.option("--nesterov/--no-nesterov", default=False, show_default=True)
@click.option("--augment", type=click.Choice(["none", "flip", "crop_flip"]), default="none", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cpu, cuda or cuda:N.")
@click.option("--num-workers", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads while training (1 is fastest on a busy machine).")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="build_model option, e.g. fin_width=64 or stem_stride1=false (repeatable).")
@click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE",
              help="camzoo.data.load option for both splits, e.g. num_classes=4 (repeatable).")
@click.option("--eval/--no-eval", "do_eval", default=True, show_default=True, help="Report accuracy on the test split.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue an interrupted run in --out.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this node training the one model (DDP, one device each), started as torchrun starts them.")
def train_command(kind, backbone, dataset_name, data_root, image_size, out_dir, seed, epochs, batch_size, lr,
                  weight_decay, schedule, warmup, nesterov, augment, device, num_workers, threads, model_options,
                  dataset_options, do_eval, resume, progress, nproc) -> None:
    """Train a model; writes OUT/model.pt (load with camzoo.models.load_model).

    With --nproc N, or under torchrun (``torchrun --nproc-per-node N -m camzoo train ...``), one
    model trains on N processes with DistributedDataParallel (one GPU each, or the CPU with gloo);
    --batch-size is the global batch, rank 0 writes the checkpoints, and a run resumes on any number
    of processes.
    """
    from ..data import load  # lazy: torch and the datasets load only when training
    from ..train import TrainConfig, train

    from ..models import get_kind, kind_names

    if kind not in kind_names():
        raise click.BadParameter(f"{kind!r} is not a model kind; choose one of {', '.join(kind_names())}", param_hint="--kind")
    from ..train.ddp import init_from_env, world
    from ..world import WorldError, place_from_env

    device = str(resolve_device_option(device))
    options = parse_options(model_options, "--model-option", "fin_width=64")
    data_options = parse_options(dataset_options, "--dataset-option", "num_classes=4")
    try:
        if nproc > 1 and place_from_env() is None:  # not yet a rank: start the ranks
            from . import run_on_ranks

            run_on_ranks(nproc, device, preload=("camzoo.data", "camzoo.train", "torch._dynamo"))
        device = init_from_env(device)  # under torchrun: this rank's device, DDP
    except WorldError as err:  # torchrun's variables, or a rank without a GPU of its own
        raise click.ClickException(str(err)) from err
    rank, world_size = world()
    check_writable(Path(out_dir), "--out", is_dir=True)
    config = TrainConfig(
        kind=kind, backbone=backbone, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        schedule=schedule, warmup=warmup, nesterov=nesterov, seed=seed, augment=augment, device=device,
        num_workers=num_workers, num_threads=threads,
        model_options=options, progress=progress if rank == 0 else False,
    )
    try:
        train_set = load(dataset_name, "train", root=data_root, image_size=image_size, **data_options)
        eval_set = load(dataset_name, "test", root=data_root, image_size=image_size, **data_options) if do_eval else None
        result = train(config, train_set, out_dir, eval_dataset=eval_set, resume=resume, distributed=world_size > 1)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        raise click.ClickException(str(err)) from err
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: {_kept(Path(out_dir), epochs)}", err=True)
        raise SystemExit(130) from None
    if rank != 0:
        return  # rank 0 reports
    task = get_kind(kind).task
    acc = "pixel acc" if task == "segmentation" else "acc"
    line = f"{kind}/{backbone} seed {seed}: train loss {result.train_loss:.4f}"
    if task != "detection":  # a detector has no training accuracy: its score is AP50 on the test split
        line += f", train {acc} {result.train_accuracy:.4f}"
    if result.eval_accuracy is not None:
        line += f", test {acc} {result.eval_accuracy:.4f}"
    if "mean_iou" in result.eval_stats:
        line += f", test mIoU {result.eval_stats['mean_iou']:.4f}"
    if "ap50" in result.eval_stats:
        line += f", test AP50 {result.eval_stats['ap50']:.4f}"
    click.echo(f"{line} ({result.total_train_time_s:.1f} s training) -> {result.checkpoint}")


def _kept(out_dir: Path, epochs: int) -> str:
    """What an interrupted run leaves in ``out_dir``, read from its files (the trainer saves
    checkpoint.pt and train_log.json atomically after every epoch)."""
    from ..train.state import CHECKPOINT_NAME, LOG_NAME

    if not (out_dir / CHECKPOINT_NAME).is_file():
        return "no epoch had finished, so nothing was kept; rerun the same command to start again"
    try:
        done = len(json.loads((out_dir / LOG_NAME).read_text(encoding="utf-8"))["history"])
    except (OSError, ValueError, KeyError, TypeError):
        done = None
    progress = f"{done} of {epochs} epochs" if done is not None else "the last finished epoch"
    return (f"{out_dir / CHECKPOINT_NAME} keeps {progress}; rerun the same command (with --resume, the "
            "default) to continue from there")


def register(group: click.Group) -> None:
    group.add_command(train_command)
