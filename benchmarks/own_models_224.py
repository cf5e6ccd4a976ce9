"""The README's own-models command at its default 224 px, against its floor.

    camzoo bench --model resnet18 --checkpoint a.pt --checkpoint b.pt --data ROOT --out OUT

ROOT is an annotated folder of scikit-image's bundled photos (tests/helpers.py's ``photo_folder``: five
photos and the horse silhouette with its mask, ``--images`` in all); a.pt, b.pt are random-init timm
resnet18 state dicts. The command runs in a child process, timed (wall) and charged (user + system CPU
of the child, from ``resource.getrusage(RUSAGE_CHILDREN)``); a global forward hook in the child counts
every pass through a model, by the camzoo function that asked for it.

The floor: the passes the run needs (all it makes but the untimed warm-up explains) times the cost of
one, measured in this process before and after the run on the same model at 224 px: a forward of the
BatchNorm-folded copy (what the games query) at the run's chunk size and at 32 images (the cheaper is
taken), and a Grad-CAM explain (forward + backward to the layer) at the run's explain batch. Wall and
CPU seconds alike. Kernel share: system time / (user + system time) of the child.

    python benchmarks/own_models_224.py                       # 24 photos, 2 checkpoints, 224 px
    python benchmarks/own_models_224.py --images 12 --checkpoints 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# The child: a global forward hook counts the images (in 224 px equivalents) of every outermost model
# call, by the innermost camzoo function on the stack that names what asked for it, then runs the CLI.
CHILD = r"""
import atexit, collections, json, sys, torch
SITES = {"play": "games (deletion/insertion, MoRF/LeRF)", "average_drop_increase": "average drop",
         "unperturbed_scores": "unperturbed scores", "confident_cells": "grid cells (confidence)",
         "predict": "accuracy (model cell)", "random_logit_similarity": "random logit (explain)",
         "explain_block": "explain", "play_grid_game": "grid games (explain)", "focus_score": "focus (explain)",
         "predictions": "perturbed predictions", "_num_classes": "class count"}
counts, depth, target, size = collections.Counter(), [0], sys.argv[1], int(sys.argv[2])
def site():
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_name
        if name in SITES and "camzoo" in frame.f_code.co_filename:
            # explain_block's untimed warm-up call runs before its timed loop defines per_image_seconds
            if name == "explain_block" and "per_image_seconds" not in frame.f_locals:
                return "explain (untimed warm-up)"
            return SITES[name]
        frame = frame.f_back
    return "other"
def pre(module, args):
    depth[0] += 1
def post(module, args, output):
    depth[0] -= 1
    if depth[0] == 0 and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        x = args[0]
        kind = "grad" if torch.is_grad_enabled() else "forward"
        counts[(site(), kind)] += x.shape[0] * x.shape[2] * x.shape[3] / (size * size)
torch.nn.modules.module.register_module_forward_pre_hook(pre)
torch.nn.modules.module.register_module_forward_hook(post)
atexit.register(lambda: open(target, "w").write(json.dumps([[s, k, v] for (s, k), v in counts.items()])))
from camzoo.cli import main
sys.argv = ["camzoo"] + sys.argv[3:]
main()
"""


def children_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_inputs(work: Path, images: int, checkpoints: int, size: int) -> tuple[Path, list[Path]]:
    """The photo folder (``images`` photos over its 6 classes) and ``checkpoints`` resnet18 state dicts."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import PHOTOS, photo_folder, timm_weights

    classes = len(PHOTOS) + 1  # and the horse
    folder = work / "photos"
    if not folder.exists():
        photo_folder(folder, per_class=max(1, images // classes))
    paths = [work / f"{chr(ord('a') + k)}.pt" for k in range(checkpoints)]
    for seed, path in enumerate(paths):
        if not path.exists():
            timm_weights(path, "resnet18", seed, num_classes=classes)
    return folder, paths


def pass_costs(size: int, chunk: int, explain_batch: int, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Seconds per image (wall, CPU of this process) of a forward of the folded resnet18 at ``chunk`` and
    at 32 images, and of a Grad-CAM explain at ``explain_batch``: the median of ``repeats`` batches each."""
    import statistics

    import timm

    import camzoo
    from camzoo.batchnorm_folding import fold_batchnorm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=6).eval()
    folded = fold_batchnorm(model)

    def timed(fn, batch: int) -> tuple[float, float]:
        fn()  # warm-up: shapes, allocator
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), self_cpu()
            fn()
            walls.append((time.perf_counter() - wall) / batch)
            cpus.append((self_cpu() - cpu) / batch)
        return statistics.median(walls), statistics.median(cpus)

    found = {}
    for batch in sorted({chunk, 32}):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            found[f"forward x{batch}"] = timed(lambda x=x: folded(x), batch)
    x = torch.randn(explain_batch, 3, size, size)
    found[f"gradcam x{explain_batch}"] = timed(lambda: camzoo.explain(model, x, method="gradcam", target=0), explain_batch)
    return found


def commit_times(out: Path, started: float) -> list[tuple[str, float]]:
    """(cell, seconds after the start) of every committed cell, in commit order."""
    from datetime import datetime

    with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT seed, method, finished_at FROM cells ORDER BY finished_at").fetchall()
    return [(f"seed{seed}/{method}", datetime.fromisoformat(at).timestamp() - started) for seed, method, at in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="photos in the folder (over 6 classes)")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="--image-size (the command's default: 224)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the photos, checkpoints and --out")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more camzoo bench flags")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="own_models_224_"))
    work.mkdir(parents=True, exist_ok=True)
    folder, checkpoints = build_inputs(work, args.images, args.checkpoints, args.size)
    out = work / "out"
    if out.exists():
        import shutil

        shutil.rmtree(out)

    from camzoo.bench.config import resolve_config
    from camzoo.metrics import EvalSettings

    settings = EvalSettings.from_config(resolve_config("quick", None)["eval"])
    batch = resolve_config("quick", None)["eval"]["batch_size"]
    chunk = settings.chunk_for(torch.empty(1, 3, args.size, args.size))
    before = pass_costs(args.size, chunk, min(batch, args.images))

    command = ["bench", "--model", "resnet18", *sum((["--checkpoint", str(p)] for p in checkpoints), []),
               "--data", str(folder), "--out", str(out)]
    if args.size != 224:
        command += ["--image-size", str(args.size)]
    command += args.extra
    counts_file = work / "passes.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    print("$ camzoo " + " ".join(command), flush=True)
    user0, sys0 = children_cpu()
    started_wall, started = time.perf_counter(), time.time()
    code = subprocess.call([sys.executable, "-c", CHILD, str(counts_file), str(args.size), *command], env=env)
    wall = time.perf_counter() - started_wall
    user1, sys1 = children_cpu()
    if code != 0:
        sys.exit(f"camzoo bench exited {code}")
    after = pass_costs(args.size, chunk, min(batch, args.images))

    cpu, kernel = (user1 - user0) + (sys1 - sys0), sys1 - sys0
    passes = json.loads(counts_file.read_text())
    needed = [(site, kind, n) for site, kind, n in passes if "warm-up" not in site]
    forward_key = min((k for k in before if k.startswith("forward")), key=lambda k: before[k][0] + after[k][0])
    explain_key = next(k for k in before if k.startswith("gradcam"))
    per_pass = {kind: tuple((before[key][i] + after[key][i]) / 2 for i in range(2))
                for kind, key in (("forward", forward_key), ("grad", explain_key))}
    floor_wall = sum(n * per_pass[kind][0] for _, kind, n in needed)
    floor_cpu = sum(n * per_pass[kind][1] for _, kind, n in needed)

    print(f"\nmachine: {os.cpu_count()} CPU threads, torch {torch.__version__}, {torch.get_num_threads()} torch threads; "
          f"load average before/after: {os.getloadavg()[0]:.1f}")
    print(f"chunk: {chunk} inputs per forward at {args.size} px (eval.chunk_mb, eval.chunk_size)\n")
    print(f"| pass | kind | images at {args.size} px |")
    print("|---|---|---:|")
    for site, kind, n in sorted(passes, key=lambda row: -row[2]):
        print(f"| {site} | {kind} | {n:,.0f} |")
    print("\n| per-pass cost | before: wall ms / CPU ms per image | after |")
    print("|---|---:|---:|")
    for key in before:
        print(f"| {key} | {1000 * before[key][0]:.1f} / {1000 * before[key][1]:.1f} | "
              f"{1000 * after[key][0]:.1f} / {1000 * after[key][1]:.1f} |")
    images = args.images // 6 * 6
    print("\n| images | size | checkpoints | wall | floor (wall) | ratio | CPU | floor (CPU) | ratio | kernel share |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {images} | {args.size} | {len(checkpoints)} | {wall:.0f} s | {floor_wall:.0f} s | {wall / floor_wall:.2f}x | "
          f"{cpu:.0f} s | {floor_cpu:.0f} s | {cpu / floor_cpu:.2f}x | {kernel / cpu:.1%} |")
    times = commit_times(out, started)
    methods = [(cell, at) for cell, at in times if not cell.endswith(("/gallery", "/model"))]
    if methods:
        gaps = [b - a for (_, a), (_, b) in zip(methods, methods[1:])]
        print(f"\ncells: {len(times)} committed; the first method cell at {methods[0][1]:.0f} s "
              f"({methods[0][0]}), the longest gap between method cells {max(gaps, default=0):.0f} s")


if __name__ == "__main__":
    main()
