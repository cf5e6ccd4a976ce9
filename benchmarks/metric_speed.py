"""Deletion + insertion throughput against its floor: the model's own forward time.

Both games need 2 * steps + 1 distinct forwards per image (the original image is deletion's first
point and insertion's last). The floor is that many forwards at the per-image forward time of the
same model at the same batch size, measured in the same run; the ratio says how much the metric adds
(building the perturbed inputs, the softmax, bookkeeping). Target: within 1.25x.

    python benchmarks/metric_speed.py --device cpu --images 1 --steps 28
    python benchmarks/metric_speed.py --device cuda --images 64 --batch 256 --autocast
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from camzoo.metrics import deletion_insertion
from camzoo.modelutil import describe_device, resolve_device
from camzoo.modelutil import synchronize as synchronise


def forward_seconds_per_image(model: torch.nn.Module, batch: int, size: int, device: torch.device,
                              repeats: int, autocast: bool) -> list[float]:
    """Per-image time of plain batched forwards (the floor's unit), one sample per repeat."""
    images = torch.randn(batch, 3, size, size, device=device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    samples = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
        model(images)  # warm-up (cuDNN autotuning, allocator)
        for _ in range(repeats):
            synchronise(device)
            start = time.perf_counter()
            model(images).float().softmax(1)
            synchronise(device)
            samples.append((time.perf_counter() - start) / batch)
    return samples


class NearlyFreeModel(torch.nn.Module):
    """Global average pool + linear: isolates what the metric itself costs per input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--model", default="resnet50", help="timm model name (pretrained=False)")
    parser.add_argument("--size", type=int, default=224, help="image size")
    parser.add_argument("--images", type=int, default=1, help="images to score")
    parser.add_argument("--steps", type=int, default=28, help="steps per curve (RISE's published protocol: 28)")
    parser.add_argument("--batch", type=int, default=32, help="inputs per forward (the metric's chunk_size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward batches before and after")
    parser.add_argument("--autocast", action="store_true", help="mixed precision (float16 on CUDA)")
    args = parser.parse_args()

    import timm

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=1000).eval().to(device)
    images = torch.randn(args.images, 3, args.size, args.size, device=device)
    maps = torch.rand(args.images, args.size, args.size, device=device)
    targets = torch.randint(0, 1000, (args.images,), device=device)

    floor_samples = forward_seconds_per_image(model, args.batch, args.size, device, args.repeats, args.autocast)
    synchronise(device)
    start = time.perf_counter()
    deletion_insertion(model, images, maps, targets, steps=args.steps, chunk_size=args.batch, autocast=args.autocast)
    synchronise(device)
    elapsed = time.perf_counter() - start
    floor_samples += forward_seconds_per_image(model, args.batch, args.size, device, args.repeats, args.autocast)

    free_model = NearlyFreeModel().to(device)
    overhead_samples = []
    for _ in range(3):  # the best of three: this part is short and the machine may be shared
        synchronise(device)
        start = time.perf_counter()
        deletion_insertion(free_model, images, maps, targets, steps=args.steps, chunk_size=args.batch)
        synchronise(device)
        overhead_samples.append(time.perf_counter() - start)
    overhead = min(overhead_samples)

    per_image_forward = statistics.median(floor_samples)
    forwards = args.images * (2 * args.steps + 1)
    floor = forwards * per_image_forward
    print(f"device: {describe_device(device)}; torch {torch.__version__}; {args.model} at {args.size}px, "
          f"{args.images} image(s), {args.steps} steps, forward batch {args.batch}, autocast {args.autocast}")
    print(f"forward per image: {per_image_forward * 1e3:.2f} ms "
          f"(min {min(floor_samples) * 1e3:.2f}, max {max(floor_samples) * 1e3:.2f})")
    print(f"deletion+insertion: {elapsed:.2f} s for {forwards} forwards -> {args.images / elapsed:.3f} images/s")
    print(f"floor ({forwards} forwards x forward per image): {floor:.2f} s")
    print(f"ratio to floor: {elapsed / floor:.3f}x (target <= 1.25x)")
    print(f"metric alone (nearly free model): {overhead:.2f} s = {overhead / forwards * 1e3:.3f} ms per input "
          f"-> overhead-based ratio {1 + overhead / floor:.3f}x")


if __name__ == "__main__":
    main()
