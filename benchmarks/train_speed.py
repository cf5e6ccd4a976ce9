"""Training throughput of baseline, ABN and LFI-CAM on the same backbone and batch.

Measures images/s of the trainer's own optimisation step (``camzoo.train.train_step``: forward,
kind-specific loss, backward, SGD step) on random data already on the device, and prints each
kind as a ratio to the baseline. Example:

    python benchmarks/train_speed.py --backbone resnet20 --image-size 32 --batch 128
    python benchmarks/train_speed.py --device cuda --backbone resnet50 --image-size 224 --batch 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camzoo.modelutil import describe_device, resolve_device, synchronize
from camzoo.models import build_model
from camzoo.models.backbones import cifar_depth
from camzoo.train import train_step


def make_runner(kind: str, args, device: torch.device, options: dict):
    """A function timing ``steps`` training steps of one kind (model, optimizer, batch built once)."""
    torch.manual_seed(0)
    model = build_model(kind, args.backbone, args.num_classes, **options).to(device).train()
    channels_last = args.channels_last if args.channels_last is not None else True  # the trainer's default
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4,
                                fused=device.type == "cuda" or None)  # as the trainer
    amp = args.amp if args.amp is not None else device.type == "cuda"
    dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if amp else contextlib.nullcontext
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device)

    def run(steps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss, _ = train_step(model, optimizer, scaler, x, y, autocast)
        loss.item()  # one sync at the end, as the trainer does per log interval
        synchronize(device)
        return time.perf_counter() - start

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kinds", default="baseline,abn,lfi")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--lfi-stem", choices=("official", "same"), default="same",
                        help="timm backbones: LFI-CAM with the official stride-1 stem, or the baseline's stem")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    runners = {}
    for kind in args.kinds.split(","):
        cifar = cifar_depth(args.backbone) is not None
        options = {"stem_stride1": False} if kind == "lfi" and args.lfi_stem == "same" and not cifar else {}
        runners[kind] = make_runner(kind, args, device, options)
        runners[kind](args.warmup)
    # Round-robin repeats, median per kind: load changes on a shared machine hit all kinds alike.
    times = {kind: [] for kind in runners}
    for _ in range(args.repeats):
        for kind, run in runners.items():
            times[kind].append(run(args.steps))
    rates = {kind: args.batch * args.steps / statistics.median(t) for kind, t in times.items()}
    name = describe_device(device)
    base = rates.get("baseline")
    if args.json:
        print(json.dumps({"device": name, "backbone": args.backbone, "batch": args.batch, "image_size": args.image_size,
                          "images_per_s": rates, "ratio_to_baseline": {k: v / base for k, v in rates.items()} if base else None}))
        return
    print(f"device: {name}; backbone {args.backbone}, batch {args.batch}, {args.image_size}px, torch {torch.__version__}")
    print(f"{'kind':<10}{'images/s':>12}{'vs baseline':>14}")
    for kind, rate in rates.items():
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"{kind:<10}{rate:>12.1f}{ratio:>14}")


if __name__ == "__main__":
    main()
