"""Feed camzoo bad and unusual inputs, as a new user would, and print a table: input -> outcome.

Outcomes: ``ok`` (it worked and a check of the result passed), ``error`` (one clear line: the
expected exception type, or a CLI exit code 1/2 without a traceback), ``SILENT`` (it "worked" but
the check shows the result is wrong), ``TRACEBACK`` (an internal error, or a torch message of many
lines), ``MEMORY`` (the huge image took more than --max-gib). Exits 1 unless every row is ok/error.

    python benchmarks/bad_inputs.py                   # the 10000 x 10000 px image of issue 13
    python benchmarks/bad_inputs.py --huge-side 1500  # quick (the test suite runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import camzoo
from camzoo.cli import main as cli
from camzoo.inputs import load_image
from camzoo.models.checkpoint import save_model
from camzoo.models.loading import load_any_model

CLEAR_ERRORS = (ValueError, TypeError, FileNotFoundError, IndexError, MemoryError, FloatingPointError)


class NoCfg(nn.Module):
    """A torchvision-like classifier: no pretrained_cfg, so pixel inputs run at their own size."""

    def __init__(self, outputs: int = 3, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel)
        self.fc = nn.Linear(4, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean((2, 3)))


def api(fn: Callable[[], Any], check: Callable[[Any], bool] | None = None) -> tuple[str, str]:
    """Run a Python call; classify its outcome."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = fn()
    except CLEAR_ERRORS as err:
        text = str(err)
        if "\n" in text.strip() or len(text) > 400:
            return "TRACEBACK", f"{type(err).__name__} of {len(text)} chars / {text.count(chr(10)) + 1} lines"
        return "error", f"{type(err).__name__}: {text}"
    except Exception as err:  # anything else is an internal error a user would see as a traceback
        return "TRACEBACK", f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
    if check is not None and not check(value):
        return "SILENT", "the result failed its check"
    return "ok", ""


def command(args: list[Any], check: Callable[[Any], bool] | None = None) -> tuple[str, str]:
    """Run a CLI command in-process; classify its outcome."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    if result.exception is not None and not isinstance(result.exception, SystemExit) or "Traceback" in result.output:
        return "TRACEBACK", f"{type(result.exception).__name__}: {str(result.exception)[:200]}"
    if result.exit_code != 0:
        if result.exit_code == 1 and "Usage:" in result.output:
            return "TRACEBACK", "a runtime failure printed a Usage banner"
        return "error", f"exit {result.exit_code}: {last}"
    if check is not None and not check(result):
        return "SILENT", f"exit 0 but the result failed its check: {last}"
    return "ok", last


def picture(path: Path, size: tuple[int, int] = (60, 40), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


@contextlib.contextmanager
def bomb_limit(pixels: int):
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def huge_image_child(path: str, max_gib: float) -> None:
    """In a fresh process: explain one huge PNG with a torchvision model (which runs at the image's own
    size); print the map's size and the peak resident memory."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = camzoo.explain(model, path)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{tuple(result.maps.shape)} {peak_gib:.2f}")


def huge_image_case(tmp: Path, side: int, max_gib: float) -> tuple[str, str]:
    path = tmp / "huge.png"
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    with bomb_limit(None):  # writing it is not the test; reading it (with PIL's limit on) is
        Image.fromarray(np.stack([np.broadcast_to(ramp, (side, side))] * 3, axis=2)).save(path, compress_level=1)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--huge-child", str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return "TRACEBACK", proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    shape, peak = proc.stdout.split(") ")
    if float(peak) > max_gib:
        return "MEMORY", f"peak {float(peak):.2f} GiB > {max_gib} GiB"
    return "ok", f"map {shape}), peak RSS {float(peak):.2f} GiB (limit {max_gib} GiB)"


def cases(tmp: Path, huge_side: int, max_gib: float) -> list[tuple[str, tuple[str, str]]]:
    torch.manual_seed(0)
    plain = NoCfg().eval()
    named = camzoo.build_model("baseline", "resnet8", num_classes=3, class_names=["cat", "dog", "fox"], image_size=32).eval()
    ckpt = save_model(named, tmp / "model.pt")
    one_logit = NoCfg(outputs=1).eval()
    x = torch.randn(1, 3, 16, 16)

    gray16 = tmp / "gray16.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(gray16)
    turned = tmp / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(turned, exif=exif)
    good = picture(tmp / "good.png")
    truncated = tmp / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    text = tmp / "notes.jpg"
    text.write_text("not an image")
    state_other = tmp / "other.pth"
    torch.save(NoCfg().state_dict(), state_other)
    evil = tmp / "evil.pth"
    evil.write_bytes(pickle.dumps(os.system))  # unpickling it would import os.system
    existing = tmp / "taken.txt"
    existing.write_text("x")
    for name in ("a.png", "sub/a.png"):
        picture(tmp / "dupes" / name, seed=len(name))
    folder = tmp / "folder"
    for i in range(3):
        picture(folder / f"p{i}.png", seed=i)
    (folder / "broken.png").write_bytes(b"junk")
    dataset = tmp / "ds"
    for cls in ("a", "b"):
        picture(dataset / "train" / cls / "0.png", size=(16, 16))
    (dataset / "train" / "a" / "bad.png").write_bytes(b"junk")
    out = tmp / "out"

    def ex(img, **kw):
        return lambda: camzoo.explain(kw.pop("model", plain), img, **kw)

    rows = [
        ("explain: 0x0 uint8 array", api(ex(np.zeros((0, 0, 3), np.uint8)))),
        ("explain: float64 HxWx3 array", api(ex(np.zeros((8, 8, 3))))),
        ("explain: tensor with 4 channels", api(ex(torch.randn(1, 4, 8, 8)))),
        ("explain: tensor of NaN", api(ex(torch.full((3, 8, 8), float("nan"))))),
        ("explain: an int", api(ex(42))),
        ("explain: tensors 8x8 and 9x9", api(ex([torch.randn(3, 8, 8), torch.randn(3, 9, 9)]))),
        ("explain: tensors 8x8 and 9x9, image_size=16", api(ex([torch.randn(3, 8, 8), torch.randn(3, 9, 9)], image_size=16),
                                                            lambda r: r.maps.shape == (2, 16, 16))),
        ("explain: tensor 16x16 with image_size=24", api(ex(x, image_size=24), lambda r: r.maps.shape == (1, 24, 24))),
        ("explain: image_size=0", api(ex(x, image_size=0))),
        ("explain: max_size=-1", api(ex(x, max_size=-1))),
        ("explain: target='cat', model without class names", api(ex(x, target="cat"))),
        ("explain: target='dog', model with class names", api(ex(torch.randn(1, 3, 32, 32), model=named, target="dog"),
                                                             lambda r: r.targets.tolist() == [1])),
        ("explain: target=7 on 3 classes", api(ex(x, target=7))),
        ("explain: 2 targets for 3 images", api(ex(torch.randn(3, 3, 16, 16), target=[0, 1]))),
        ("explain: target=1.5", api(ex(x, target=1.5))),
        ("Explanation.label(5) of one image", api(lambda: camzoo.explain(plain, x).label(5))),
        ("explain: headless timm model (num_classes=0)", api(lambda: camzoo.explain(
            __import__("timm").create_model("resnet10t", pretrained=False, num_classes=0), torch.randn(1, 3, 32, 32)))),
        ("explain: one-logit model (score = sigmoid)", api(ex(x, model=one_logit), lambda r: torch.allclose(
            r.scores, torch.sigmoid(one_logit(x)[:, 0].detach())))),
        ("explain: model that cannot run at 2x2 px", api(ex(torch.randn(1, 3, 2, 2), model=NoCfg(kernel=5)))),
        ("explain: unknown method", api(ex(x, method="scorecam"))),
        ("explain: unknown layer", api(ex(x, layer="conv9"))),
        ("load: 16-bit grayscale PNG at half scale", api(lambda: load_image(gray16), lambda im: np.asarray(im).max() == 128)),
        ("load: JPEG with EXIF 'rotate 90'", api(lambda: load_image(turned), lambda im: im.size == (20, 40))),
        ("load: truncated PNG", api(lambda: load_image(truncated))),
        ("load: empty file", api(lambda: load_image(empty))),
        ("load: text file named .jpg", api(lambda: load_image(text))),
        ("load: missing file", api(lambda: load_image(tmp / "missing.png"))),
        ("load: over PIL's decompression-bomb limit", api(lambda: _with_limit(load_image, good, 500))),
        (f"explain: {huge_side}x{huge_side} PNG, torchvision model", huge_image_case(tmp, huge_side, max_gib)),
        ("model: corrupt checkpoint", api(lambda: load_any_model("resnet10t", empty))),
        ("model: pickle that runs code", api(lambda: load_any_model("resnet10t", evil))),
        ("model: weights of another architecture", api(lambda: load_any_model("resnet10t", state_other))),
        ("model: num_classes=0", api(lambda: load_any_model("resnet10t", None, 0))),
        ("model: camzoo checkpoint + another --model", api(lambda: load_any_model("resnet18", ckpt))),
        ("model: unknown torchvision name", api(lambda: load_any_model("torchvision:resnet1", None))),
        ("cli: explain a.png sub/a.png (same name)", command(["explain", tmp / "dupes", "--checkpoint", ckpt, "--out", out / "d"],
                                                             lambda r: len(list((out / "d").rglob("*.png"))) == 2)),
        ("cli: --target 0 --target 1 for 3 images", command(["explain", folder / "p0.png", folder / "p1.png", folder / "p2.png",
                                                             "--checkpoint", ckpt, "--target", "0", "--target", "1", "--out", out])),
        ("cli: --target wolf (not a class)", command(["explain", good, "--checkpoint", ckpt, "--target", "wolf", "--out", out])),
        ("cli: --num-classes 0", command(["explain", good, "--model", "resnet10t", "--num-classes", "0", "--out", out])),
        ("cli: --model resnet18 + resnet8 checkpoint", command(["explain", good, "--model", "resnet18", "--checkpoint", ckpt, "--out", out])),
        ("cli: --image-size 0", command(["explain", good, "--checkpoint", ckpt, "--image-size", "0", "--out", out])),
        ("cli: --out is a file", command(["explain", good, "--checkpoint", ckpt, "--out", existing])),
        ("cli: --out under a file", command(["explain", good, "--checkpoint", ckpt, "--out", existing / "sub"])),
        ("cli: --device gpu", command(["explain", good, "--checkpoint", ckpt, "--device", "gpu", "--out", out])),
        ("cli: --layer fc (not a feature map)", command(["explain", good, "--checkpoint", ckpt, "--layer", "fc", "--out", out])),
        ("cli: --method oracle (needs ground truth)", command(["explain", good, "--checkpoint", ckpt, "--method", "oracle", "--out", out])),
        ("cli: folder with one unreadable image", command(["explain", folder, "--checkpoint", ckpt, "--out", out / "f"])),
        ("cli: missing input path", command(["explain", tmp / "nope.png", "--checkpoint", ckpt, "--out", out])),
        ("cli: preview --out is a directory", command(["datasets", "preview", "shapes", "--out", tmp])),
        ("cli: preview of a folder with an unreadable image", command(["datasets", "preview", "imagefolder", "--root", dataset,
                                                                       "--out", out / "p.png"])),
        ("cli: train --device gpu", command(["train", "--kind", "baseline", "--device", "gpu", "--out", out / "t"])),
        ("cli: train --device cuda:9", command(["train", "--kind", "baseline", "--device", "cuda:9", "--out", out / "t"])),
        ("cli: explain with a torchvision: model", command(["explain", good, "--model", "torchvision:resnet18", "--image-size", "32",
                                                            "--out", out / "tv"], lambda r: (out / "tv" / "good_gradcam.png").is_file())),
    ]
    return rows


def _with_limit(fn: Callable[[Path], Any], path: Path, pixels: int) -> Any:
    with bomb_limit(pixels):
        return fn(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--huge-side", type=int, default=10000, help="Side of the huge PNG (issue 13: 10000).")
    parser.add_argument("--max-gib", type=float, default=4.0, help="Peak memory allowed for the huge image.")
    parser.add_argument("--huge-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.huge_child:
        huge_image_child(args.huge_child, args.max_gib)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = cases(Path(tmp), args.huge_side, args.max_gib)
    width = max(len(name) for name, _ in rows)
    for name, (outcome, detail) in rows:
        print(f"{name:<{width}}  {outcome:<9}  {detail[:160]}")
    counts = {kind: sum(outcome == kind for _, (outcome, _) in rows) for kind in ("ok", "error", "SILENT", "TRACEBACK", "MEMORY")}
    print(f"\n{len(rows)} inputs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0 if counts["SILENT"] == counts["TRACEBACK"] == counts["MEMORY"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
