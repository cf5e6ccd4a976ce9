"""What several test files build: pictures, checkpoints, small models, min-max, CLI calls.

Why here: a test module imported as a library couples two test files (and collects nothing new);
``from helpers import ...`` works in every test file (pytest puts tests/ on ``sys.path``).
Only the standard library is imported at the top: conftest.py imports this module in pytest-xdist's
controller too, where importing torch delayed both workers' start (see conftest's
``pytest_configure``), so each helper imports what it needs.
"""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click.testing
    import numpy as np
    import pytest
    import torch
    from torch import nn

SQUARE_COLOUR = (2.0, -1.0, 1.5)  # in normalised units: far from the N(0, 0.5) background noise


def quadrant_batch(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images (3,size,size) of noise with one square in quadrant `label`; returns images, labels, masks."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator) * 0.5
    labels = torch.randint(0, 4, (n,), generator=generator)
    half, side = size // 2, size // 4
    top = torch.randint(0, half - side + 1, (n,), generator=generator) + (labels // 2) * half
    left = torch.randint(0, half - side + 1, (n,), generator=generator) + (labels % 2) * half
    rows = torch.arange(size)[None, :, None]
    cols = torch.arange(size)[None, None, :]
    masks = (
        (rows >= top[:, None, None])
        & (rows < top[:, None, None] + side)
        & (cols >= left[:, None, None])
        & (cols < left[:, None, None] + side)
    )
    colour = torch.tensor(SQUARE_COLOUR)[None, :, None, None]
    return torch.where(masks[:, None], colour, images), labels, masks


# --- files -------------------------------------------------------------------------------------


def picture(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, gray: bool = False, **save: Any) -> Path:
    """A seeded noise picture of ``size`` (width, height), RGB or 8-bit gray, written to ``path`` (its
    folders made; ``save``: PIL's save options, e.g. ``exif``); returns ``path``."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, np.uint8)).save(path, **save)
    return path


def timm_model(name: str = "resnet10t", seed: int = 0, **kwargs: Any) -> nn.Module:
    """A timm model with random weights drawn after ``torch.manual_seed(seed)``, in eval mode."""
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def timm_weights(path: Path, name: str = "resnet10t", seed: int = 0, **kwargs: Any) -> Path:
    """The state dict of :func:`timm_model` saved at ``path``: what ``--model NAME --checkpoint`` reads."""
    import torch

    torch.save(timm_model(name, seed, **kwargs).state_dict(), path)
    return path


def resnet8(seed: int = 0, **options: Any) -> nn.Module:
    """camzoo's baseline ResNet-8 with 3 classes, weights drawn after ``torch.manual_seed(seed)``, in
    eval mode: the fastest camzoo model (``options``: build_model's, e.g. class_names, image_size)."""
    import torch

    import camzoo

    torch.manual_seed(seed)
    return camzoo.build_model("baseline", "resnet8", num_classes=3, **options).eval()


def camzoo_checkpoint(path: Path, **options: Any) -> Path:
    """:func:`resnet8` at 32 px saved as a camzoo checkpoint at ``path``: what ``camzoo explain
    --checkpoint`` runs without ``--model``."""
    from camzoo.models.checkpoint import save_model

    return save_model(resnet8(image_size=32, **options), path)


def manifest_rows(out: Path) -> list[str]:
    """The rows of ``camzoo explain``'s manifest.csv in ``out``, header left out (bytes that are not
    UTF-8, as in a Latin-1 file name, kept as surrogates)."""
    return (out / "manifest.csv").read_bytes().decode("utf-8", "surrogateescape").splitlines()[1:]


def fail_writes(monkeypatch: pytest.MonkeyPatch, suffix: str, code: int = errno.ENOSPC) -> None:
    """Path.write_bytes of files ending in ``suffix`` fails with ``code``, as a full disk's write does."""
    real = pathlib.Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if f"{suffix}." in self.name or self.name.endswith(suffix):  # the temp file ".a.npy.x1y2.tmp" too
            raise OSError(code, os.strerror(code))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


# --- maps --------------------------------------------------------------------------------------


def minmax(array: np.ndarray) -> np.ndarray:
    """Per-image min-max over the last two axes; constant -> zeros (the documented contract)."""
    import numpy as np

    low = array.min(axis=(-2, -1), keepdims=True)
    span = array.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (array - low) / np.where(span > 0, span, 1), 0.0)


def per_image_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each image's map in ``a`` with the same image's in ``b``."""
    import numpy as np

    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])


# --- small models ------------------------------------------------------------------------------


def linear_head_cnn(weight: torch.Tensor) -> nn.Module:
    """features = conv (identity kernels); logits = W @ mean_hw(features) + b: Grad-CAM has a closed form."""
    import torch
    from torch import nn

    class LinearHeadCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 3, 1, bias=False)
            with torch.no_grad():
                self.features.weight.copy_(torch.eye(3)[:, :, None, None])
            self.head = nn.Linear(3, weight.shape[0])
            with torch.no_grad():
                self.head.weight.copy_(weight)
                self.head.bias.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean((2, 3)))

    return LinearHeadCNN()


def no_cfg_model(outputs: int = 3, kernel: int = 3, squeeze: bool = False) -> nn.Module:
    """A torchvision-like classifier (the one benchmarks/bad_inputs.py feeds inputs to): no
    pretrained_cfg, so pixel inputs run at their own size; ``squeeze`` drops a batch of one's axis."""
    from torch import nn

    class NoCfg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, kernel), nn.Linear(4, outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.fc(self.conv(x).relu().mean((2, 3)))
            return logits.squeeze() if squeeze else logits

    return NoCfg()


# --- the command line --------------------------------------------------------------------------


def cli(*args: Any) -> click.testing.Result:
    """``camzoo ARGS`` in this process (paths as they are, bytes included); any exception other than
    click's own exit is a traceback a user would see, so it fails the test."""
    from click.testing import CliRunner

    from camzoo.cli import main

    result = CliRunner().invoke(main, [a if isinstance(a, str) else os.fspath(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}")
    return result


def usage_error(result: click.testing.Result, message: str) -> None:
    """Exit code 2 (click's usage errors) with ``message`` in the output."""
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


def runtime_error(result: click.testing.Result, message: str) -> None:
    """Exit code 1 with ``message`` and without click's Usage banner: a failure at run time, not a misuse."""
    assert result.exit_code == 1, result.output
    assert message in result.output and "Usage:" not in result.output, result.output


def markdown_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(heading, rows of cells; the first row is the header) of every table in a Markdown text."""
    found, heading, rows = [], "", []
    for line in text.splitlines() + [""]:
        if line.startswith("### "):
            heading = line[4:]
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            found.append((heading, rows))
            rows = []
    return found


# The benchmark tests' tiny grid: 2 seeds x (baseline, lfi) x resnet8 on 4-class shapes at 32 px.
TINY_GRID = """
preset = "custom"
seeds = [0, 1]
kinds = ["baseline", "lfi"]
backbones = ["resnet8"]
methods = ["gradcam", "eigencam", "attention", "random", "oracle"]

[[datasets]]
name = "shapes"
root = "{cache}"
image_size = 32
options = {{num_classes = 4, train = {{num_images = 128}}, test = {{num_images = 48}}}}

[train]
epochs = {epochs}
batch_size = 32

[eval]
images = 16
batch_size = 8
deletion_steps = 4
substrates = ["zeros", "road"]
chunk_size = 32
gallery_images = 2
"""


def tiny_config(tmp_path: Path, epochs: int = 1) -> Path:
    """:data:`TINY_GRID` written to ``tmp_path/tiny.toml``, its dataset cached under ``tmp_path/cache``."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_GRID.format(cache=tmp_path / "cache", epochs=epochs), encoding="utf-8")
    return path


# Two seeds of one baseline, CPU: the smallest grid two ranks can share.
TINY_RANKS = """
preset = "custom"
seeds = [0, 1]
kinds = ["baseline"]
backbones = ["resnet8"]
methods = ["gradcam", "random"]
device = "cpu"

[[datasets]]
name = "shapes"
root = "{cache}"
image_size = 32
options = {{num_classes = 4, train = {{num_images = 64}}, test = {{num_images = 16}}}}

[train]
epochs = 1
batch_size = 32

[eval]
images = 8
batch_size = 8
deletion_steps = 4
substrates = ["zeros"]
chunk_size = 32
gallery_images = 1
"""


# the class folders of :func:`write_folder`
CLASSES = ("ant", "bee", "cat", "dog")


def write_folder(root: Path, per_class: int = 4, side: int = 48) -> Path:
    """A 4-class folder: a bright square on noise per image, its box in boxes.csv, masks for half."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["file,x0,y0,x1,y1"]
    for label, name in enumerate(CLASSES):
        for index in range(per_class):
            pixels = rng.integers(0, 80, size=(side, side, 3), dtype=np.uint8)
            x0, y0 = int(rng.integers(0, side // 2)), int(rng.integers(0, side // 2))
            pixels[y0:y0 + side // 3, x0:x0 + side // 3, label % 3] = 250
            rel = f"{name}/{name}{index}.png"
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            rows.append(f"{rel},{x0},{y0},{x0 + side // 3},{y0 + side // 3}")
            if index % 2 == 0:
                mask = np.zeros((side, side), np.uint8)
                mask[y0:y0 + side // 3, x0:x0 + side // 3] = 255
                (root / "masks" / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "masks" / rel)
    (root / "boxes.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------- CIFAR's python layout
def cifar_rows(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random CIFAR rows (3,072 bytes: the red, green and blue 32x32 planes)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def dump_py2_style(obj: Any, path: Path) -> None:
    """Pickled as the official CIFAR files are."""
    import pickle

    # Protocol 2 with bytes keys, as the official files (written by Python 2's cPickle) load.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 in the official python layout (5 training batches and a test batch); returns
    each batch's rows and labels for comparison."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump_py2_style({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
                   folder / "batches.meta")
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        dump_py2_style({b"batch_label": name.encode(), b"labels": labels, b"data": rows[name],
                        b"filenames": [f"img_{k}.png".encode() for k in range(per_batch)]}, folder / name)
        rows[name + "_labels"] = np.array(labels)
    return rows


def scene_splits(root: Path, size: int = 32) -> tuple[Any, Any]:
    """(train, test) splits of "scenes" at ``size`` px, small enough to train a segmenter or a detector on
    in a second or two (tests/test_segmenter.py, tests/test_detector.py)."""
    from camzoo import data

    return (data.load("scenes", "train", root=root, image_size=size, num_images=96),
            data.load("scenes", "test", root=root, image_size=size, num_images=32))


# ---------------------------------------------------------------- a photo folder, as a user brings one
# class folder -> scikit-image's bundled photo (shipped in the wheel: nothing is downloaded)
PHOTOS = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "camera": "camera"}
AWKWARD_SIDES = (423, 487)  # 423 * float32(224 / 423) = 224.00002: a far edge rounds past a 224 px image


def photo_folder(root: Path, per_class: int = 2, sides: tuple[int, ...] = AWKWARD_SIDES, horse: bool = True,
                 unboxed: tuple[str, ...] = (), thin: tuple[str, ...] = ()) -> Path:
    """An annotated folder (ROOT/<class>/<image>.png, boxes.csv, masks/) of scikit-image's bundled photos.

    Image k of a class is its photo, cropped a little differently per k, resized to width
    ``sides[k % n]`` and height ``sides[(k + 1) % n]``; its one row in boxes.csv ends on the image's far
    edges (x1 = width, y1 = height), the box that float32 scaling pushed out of a 224 px image.
    ``horse``: a horse/ class of the CC0 silhouette (the horse brown on noise) with its exact mask in
    masks/ and no box row. ``unboxed``: classes that get no box row (their images are unannotated);
    ``thin``: classes whose box is a 2 px wide upright line (a mast, a pole) in the middle instead, which
    covers no pixel centre at a small image size. Returns ``root``."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["file,x0,y0,x1,y1"]
    for name, photo in PHOTOS.items():
        pixels = getattr(skimage.data, photo)()
        for k in range(per_class):
            width, height = sides[k % len(sides)], sides[(k + 1) % len(sides)]
            crop = Image.fromarray(pixels[4 * k:, 6 * k:]).resize((width, height), Image.BILINEAR)
            rel = f"{name}/{name}{k}.png"
            (root / name).mkdir(parents=True, exist_ok=True)
            crop.save(root / rel)
            if name in thin:
                rows.append(f"{rel},{width // 2},{height // 4},{width // 2 + 2},{height}")
            elif name not in unboxed:
                rows.append(f"{rel},{width // 3 + k},{height // 4},{width},{height}")
    if horse:
        silhouette = ~skimage.data.horse()  # True on the horse
        for k in range(per_class):
            width, height = sides[k % len(sides)], sides[(k + 1) % len(sides)]
            mask = np.asarray(Image.fromarray(silhouette).resize((width, height), Image.NEAREST))
            image = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
            image[mask] = (140, 90, 40)
            (root / "horse").mkdir(parents=True, exist_ok=True)
            (root / "masks" / "horse").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "horse" / f"horse{k}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / "horse" / f"horse{k}.png")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
