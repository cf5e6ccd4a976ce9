"""Is the evidence in the object? Train the quick preset's baseline on "shapes" twice: on the full
images, and on the same scenes with the object removed (content="background": the background
texture shows where the object was). The first must reach high accuracy, the second stay at chance.

    python benchmarks/dataset_learnability.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from camzoo import data
from camzoo.bench.config import resolve_config
from camzoo.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--backbone", default=None, help="default: the quick preset's")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    config = resolve_config("quick")
    dataset = config["datasets"][0]
    backbone = args.backbone or config["backbones"][0]
    options = {k: v for k, v in dataset["options"].items() if k not in ("train", "test")}
    print(f"shapes at {dataset['image_size']} px, {options}, {backbone}, quick-preset training {config['train']}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    with tempfile.TemporaryDirectory() as scratch:
        for content in ("full", "background"):
            splits = {
                split: data.load("shapes", split, root=scratch, image_size=dataset["image_size"], content=content,
                                 **options, **dataset["options"].get(split, {}))
                for split in ("train", "test")
            }
            for seed in args.seeds:
                start = time.perf_counter()
                result = train(
                    TrainConfig(kind="baseline", backbone=backbone, seed=seed, device=args.device, progress=False,
                                **config["train"]),
                    splits["train"], f"{scratch}/{content}-{seed}", eval_dataset=splits["test"],
                )
                chance = 1 / len(splits["train"].classes)
                print(f"{content:10s} seed {seed}: test accuracy {result.eval_accuracy:.3f} (chance {chance:.3f}), "
                      f"train {len(splits['train'])} / test {len(splits['test'])} images, "
                      f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
