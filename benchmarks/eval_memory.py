"""Peak memory of a benchmark evaluation against the number of evaluation images (issue 21, "Scale").

Why: a 50,000-image validation run must fit on one machine, so the evaluation streams its images in
blocks (``eval.block_images``) and keeps maps only for the first ``eval.keep_maps`` images. This
script runs the real harness (``BenchRunner``, a ``[[models]]`` entry, the built-in ``shapes``
dataset at 32 px) on 500, 1,000 and 2,000 evaluation images, each in a fresh subprocess, and prints
the peak resident set (``ru_maxrss``) of each: it must stay flat. The test split holds 2,000 images
in every run, so only the evaluation grows. ``--one-block`` adds the largest size with every image in
one block (the harness before streaming) for comparison.

    python benchmarks/eval_memory.py [--checkpoint model.pt] [--sizes 500 1000 2000] [--one-block]

Without ``--checkpoint`` an untrained ResNet-8 is scored (memory does not depend on the weights; the
grid games then find no confident image and play no grid).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEST_IMAGES = 2000


def config(checkpoint: Path, cache: Path, images: int, block: int, keep: int, methods: list[str]) -> dict:
    """A bench config: one [[models]] entry on shapes, games on every image, the grid game and random logit."""
    return {
        "models": [{"checkpoints": [str(checkpoint)], "label": "resnet8"}],
        "methods": [*methods, "@controls"],
        "datasets": [{"name": "shapes", "root": str(cache), "image_size": 32,
                      "options": {"num_classes": 10, "test": {"num_images": TEST_IMAGES}}}],
        "eval": {"images": images, "block_images": block, "keep_maps": keep, "batch_size": 125,
                 "game_images": "all", "deletion_steps": 4, "deletion_fraction": 0.2, "substrates": [],
                 "grid_games": ["gridpg_2x2"], "grid_count": 16, "sensitivity": ["random_logit_similarity"]},
        "device": "cpu",
    }


def child(arguments: argparse.Namespace) -> None:
    """One evaluation in this process; prints its peak RSS, time and store size as JSON."""
    import torch

    from camzoo.bench import cost
    from camzoo.bench.config import resolve_config
    from camzoo.bench.plan import build_plan
    from camzoo.bench.runner import BenchRunner

    torch.set_num_threads(arguments.threads)
    # the cells' peak-memory column resets the kernel's high-water mark (VmHWM, which ru_maxrss reads)
    # before each explanation; keep it, so that ru_maxrss is the whole run's peak
    cost._reset_rss_peak = lambda: False
    overrides = config(Path(arguments.checkpoint), Path(arguments.cache), arguments.child, arguments.block,
                       arguments.keep_maps, arguments.methods.split(","))
    plan = build_plan(resolve_config("custom", None, overrides))
    out = Path(arguments.out)
    start = time.perf_counter()
    BenchRunner(plan, out, progress=False, echo=lambda _: None).run()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": arguments.child, "peak_rss_mb": peak_kb / 1024, "seconds": seconds,
                      "store_mb": (out / "results.sqlite").stat().st_size / 2**20}))


def prepare(work: Path, checkpoint: str | None) -> tuple[Path, Path]:
    """The model file (an untrained ResNet-8 unless given) and the generated test split's cache."""
    from camzoo.data import load
    from camzoo.models import build_model
    from camzoo.models.checkpoint import save_model

    cache = work / "cache"
    load("shapes", "test", root=str(cache), image_size=32, num_classes=10, num_images=TEST_IMAGES)  # generated once
    if checkpoint:
        return Path(checkpoint), cache
    path = work / "resnet8.pt"
    save_model(build_model("baseline", "resnet8", 10, image_size=32), path)
    return path, cache


def measure(arguments: argparse.Namespace, work: Path, checkpoint: Path, cache: Path, images: int,
            block: int) -> dict:
    out = work / f"run-{images}-{block}"
    command = [sys.executable, __file__, "--child", str(images), "--checkpoint", str(checkpoint), "--cache", str(cache),
               "--block", str(block), "--keep-maps", str(arguments.keep_maps), "--methods", arguments.methods,
               "--threads", str(arguments.threads), "--out", str(out)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--block", type=int, default=250, help="eval.block_images")
    parser.add_argument("--keep-maps", type=int, default=16, help="eval.keep_maps")
    parser.add_argument("--methods", default="gradcam,eigencam")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="a camzoo model.pt (ResNet-8, 10 shapes classes, 32 px)")
    parser.add_argument("--one-block", action="store_true", help="also run the largest size as one block")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child is not None:
        child(arguments)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        checkpoint, cache = prepare(work, arguments.checkpoint)
        runs = [(n, arguments.block) for n in arguments.sizes] + [(max(arguments.sizes), max(arguments.sizes))] * bool(
            arguments.one_block)
        rows = []
        for n, block in runs:
            rows.append((block, measure(arguments, work, checkpoint, cache, n, block)))
            print(f"measured {n} images, block {block}: {rows[-1][1]}", flush=True)
    base = rows[0][1]["peak_rss_mb"]
    print(f"methods {arguments.methods} + controls, shapes 32 px, keep_maps {arguments.keep_maps}, "
          f"{arguments.threads} thread(s)")
    print("| images | block_images | peak RSS (MB) | vs first | seconds | results.sqlite (MB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for block, row in rows:
        print(f"| {row['images']:,} | {block:,} | {row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] / base - 1:+.1%} | "
              f"{row['seconds']:.0f} | {row['store_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
