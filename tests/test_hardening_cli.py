"""Issue 13, command-line side: folders of real images, and bad input as one clear line.

Exit codes: 2 for usage errors (with click's Usage banner), 1 for runtime failures (no banner).
Models are camzoo's ResNet-8 at 32 px or timm's resnet10t, so each call takes a fraction of a second.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import camzoo
from camzoo.cli import main
from camzoo.models.checkpoint import save_model

CLASSES = ["cat", "dog", "fox"]


def run(*args: str):
    """Invoke the CLI in-process; any exception other than click's own exit is a traceback a user would see."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}")
    return result


def usage_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


def runtime_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.output and "Usage:" not in result.output, result.output


def picture(path, size=(60, 40), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A camzoo ResNet-8 (32 px, 3 named classes) saved as model.pt."""
    torch.manual_seed(0)
    model = camzoo.build_model("baseline", "resnet8", num_classes=3, class_names=CLASSES, image_size=32)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model.pt")


# --- silently wrong before ---------------------------------------------------------------------


def test_same_names_in_different_folders_get_different_outputs(tmp_path, checkpoint):
    first, second = picture(tmp_path / "a.png", seed=1), picture(tmp_path / "sub" / "a.png", seed=2)
    out = tmp_path / "d"
    result = run("explain", first, second, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a_gradcam.png", "sub/a_gradcam.png"]
    assert not np.array_equal(np.asarray(Image.open(out / "a_gradcam.png")), np.asarray(Image.open(out / "sub/a_gradcam.png")))


def test_repeated_targets_apply_one_per_image_in_order_or_are_refused(tmp_path, checkpoint):
    files = [picture(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    result = run("explain", *files[:2], "--checkpoint", checkpoint, "--target", "0", "--target", "fox", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "0.png: gradcam class cat " in result.output and "1.png: gradcam class fox " in result.output
    usage_error(run("explain", *files, "--checkpoint", checkpoint, "--target", "0", "--target", "1", "--out", tmp_path / "o"),
                "got 2 targets for 3 images")
    usage_error(run("explain", files[0], "--checkpoint", checkpoint, "--target", "wolf", "--out", tmp_path / "o"),
                "'wolf' is not a class of this model; classes: cat, dog, fox")
    usage_error(run("explain", files[0], "--checkpoint", checkpoint, "--target", "3", "--out", tmp_path / "o"),
                "target 3 is out of range for a model with 3 classes")


def test_class_names_without_names_in_the_model_are_refused(tmp_path):
    usage_error(run("explain", picture(tmp_path / "a.png"), "--model", "resnet10t", "--image-size", "32",
                    "--target", "cat", "--out", tmp_path / "o"), "this model has no class names")


@pytest.mark.parametrize("count", ["0", "-3"])
def test_num_classes_below_one_is_refused(tmp_path, count):
    usage_error(run("explain", picture(tmp_path / "a.png"), "--model", "resnet10t", "--num-classes", count,
                    "--out", tmp_path / "o"), "number of classes must be an integer >= 1")


def test_a_model_name_that_contradicts_the_camzoo_checkpoint_is_refused(tmp_path, checkpoint):
    usage_error(run("explain", picture(tmp_path / "a.png"), "--model", "resnet18", "--checkpoint", checkpoint,
                    "--out", tmp_path / "o"), "is a camzoo baseline model on backbone 'resnet8', not 'resnet18'")
    usage_error(run("explain", picture(tmp_path / "a.png"), "--num-classes", "5", "--checkpoint", checkpoint,
                    "--out", tmp_path / "o"), "has 3 classes, not 5")
    ok = run("explain", picture(tmp_path / "a.png"), "--model", "resnet8", "--checkpoint", checkpoint, "--out", tmp_path / "o")
    assert ok.exit_code == 0, ok.output


# --- tracebacks before -------------------------------------------------------------------------


def test_bad_option_values_are_usage_errors(tmp_path, checkpoint):
    image = picture(tmp_path / "a.png")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--image-size", "0", "--out", tmp_path / "o"),
                "0 is not in the range x>=1")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--device", "gpu", "--out", tmp_path / "o"),
                "'gpu' is not a device; use auto, cpu, cuda or cuda:N")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--colormap", "nope", "--out", tmp_path / "o"),
                "unknown colormap 'nope'")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--method", "oracle", "--out", tmp_path / "o"),
                "needs masks or boxes")
    usage_error(run("explain", tmp_path / "nothing_here", "--checkpoint", checkpoint, "--out", tmp_path / "o"),
                "does not exist")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--layer", "fc", "--out", tmp_path / "o"),
                "naming a module with a (B,C,h,w) output")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--layer", "nope", "--out", tmp_path / "o"),
                "Invalid value for --layer")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path, checkpoint):
    usage_error(run("explain", picture(tmp_path / "a.png"), "--checkpoint", checkpoint, "--device", "cuda",
                    "--out", tmp_path / "o"), "torch sees no CUDA device")
    usage_error(run("train", "--kind", "baseline", "--device", "cuda", "--out", tmp_path / "t"), "torch sees no CUDA device")


def test_train_device_gpu_is_a_usage_error(tmp_path):
    usage_error(run("train", "--kind", "baseline", "--device", "gpu", "--out", tmp_path / "t"), "'gpu' is not a device")
    usage_error(run("train", "--kind", "baseline", "--device", "cuda:7x", "--out", tmp_path / "t"), "is not a device")


def test_out_that_is_a_file_or_unwritable_is_a_usage_error(tmp_path, checkpoint):
    image = picture(tmp_path / "a.png")
    existing = tmp_path / "taken.txt"
    existing.write_text("x")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--out", existing), "is a file; give a directory")
    usage_error(run("explain", image, "--checkpoint", checkpoint, "--out", existing / "sub"), "is a file, not a folder")
    usage_error(run("datasets", "preview", "shapes", "--out", tmp_path), "is a directory; give a file name")
    usage_error(run("datasets", "preview", "shapes", "--out", existing / "grid.png"), "is a file, not a folder")
    assert existing.read_text() == "x"


def test_an_unwritable_out_is_a_usage_error(tmp_path, checkpoint, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)  # what a read-only folder does (root ignores chmod)
    usage_error(run("explain", picture(tmp_path / "a.png"), "--checkpoint", checkpoint, "--out", tmp_path / "ro"),
                f"cannot write to '{tmp_path / 'ro'}': Permission denied")
    usage_error(run("datasets", "preview", "shapes", "--out", tmp_path / "ro" / "grid.png"), "Permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to read-only folders")
def test_a_read_only_out_is_a_usage_error(tmp_path, checkpoint):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        usage_error(run("explain", picture(tmp_path / "a.png"), "--checkpoint", checkpoint, "--out", locked),
                    "Permission denied")
    finally:
        locked.chmod(0o700)


def test_preview_of_a_folder_with_an_unreadable_image_says_what_check_says(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            picture(tmp_path / "ds" / "train" / cls / f"{i}.png", size=(16, 16), seed=i)
    (tmp_path / "ds" / "train" / "a" / "bad.png").write_bytes(b"junk")
    checked = run("datasets", "check", "imagefolder", "--root", tmp_path / "ds", "--verify")
    previewed = run("datasets", "preview", "imagefolder", "--root", tmp_path / "ds", "--out", tmp_path / "p.png")
    runtime_error(checked, "cannot read image")
    runtime_error(previewed, "cannot read image")
    assert previewed.output.strip().splitlines()[-1] == checked.output.strip().splitlines()[-1]


def test_ctrl_c_during_train_says_what_was_kept(tmp_path, monkeypatch):
    import camzoo.train

    out = tmp_path / "run"

    def interrupted(config, train_set, out_dir, **kwargs):
        (out / "checkpoint.pt").write_bytes(b"")
        (out / "train_log.json").write_text('{"history": [{}, {}]}')
        raise KeyboardInterrupt

    monkeypatch.setattr(camzoo.train, "train", interrupted)
    result = run("train", "--kind", "baseline", "--backbone", "resnet8", "--data-root", tmp_path / "cache",
                 "--dataset-option", "num_images=32", "--image-size", "32", "--epochs", "5", "--out", out, "--no-progress")
    assert result.exit_code == 130
    assert "checkpoint.pt keeps 2 of 5 epochs; rerun the same command" in result.output


# --- the folder CLI ----------------------------------------------------------------------------


def test_folder_glob_batches_skip_unreadable_files_and_exit_1_with_a_summary(tmp_path, checkpoint):
    tree = tmp_path / "photos"
    for rel, size in (("x.png", (60, 40)), ("nested/y.jpg", (20, 50)), ("nested/deeper/z.png", (33, 33))):
        picture(tree / rel, size=size)
    (tree / "nested" / "broken.png").write_bytes(b"not an image")
    (tree / "notes.txt").write_text("ignored: not an image extension")
    extra = picture(tmp_path / "loose" / "w.png", size=(24, 24))
    out = tmp_path / "out"
    result = run("explain", tree, str(tmp_path / "loose" / "*.png"), "--checkpoint", checkpoint, "--batch-size", "2",
                 "--method", "gradcam", "--method", "eigencam", "--save-maps", "--alpha", "0.3", "--colormap", "viridis",
                 "--out", out, "--no-progress")
    runtime_error(result, "1 of 5 images could not be read and were skipped")
    assert "broken.png: cannot read image" in result.output
    assert "explained 4 of 5 images with gradcam, eigencam; 8 overlays and maps" in result.output
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"gradcam", "eigencam"}
    assert set(rows[0]) == {"input", "method", "layer", "target", "target_name", "score", "width", "height", "overlay", "map"}
    by_input = {(r["input"], r["method"]): r for r in rows}
    y = by_input[(str(tree / "nested" / "y.jpg"), "eigencam")]
    assert (y["width"], y["height"], y["target_name"] in CLASSES, bool(y["layer"])) == ("20", "50", True, True)
    assert Image.open(out / y["overlay"]).size == (20, 50)  # the photo's own size and aspect, not 32x32
    saved = np.load(out / y["map"])
    assert saved.dtype == np.float16 and saved.shape == (50, 20) and 0 <= saved.min() and saved.max() <= 1
    assert by_input[(str(extra), "gradcam")]["overlay"] == "loose/w_gradcam.png"  # the common tree is mirrored
    assert 0 < float(y["score"]) <= 1


def test_alpha_zero_gives_the_photo_back(tmp_path, checkpoint):
    photo = picture(tmp_path / "p.png", size=(37, 21))
    assert run("explain", photo, "--checkpoint", checkpoint, "--alpha", "0", "--out", tmp_path / "o").exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "p_gradcam.png")), np.asarray(Image.open(photo)))


def test_max_size_bounds_the_photo_kept_for_overlays(tmp_path, checkpoint):
    photo = picture(tmp_path / "big.png", size=(400, 200))
    result = run("explain", photo, "--checkpoint", checkpoint, "--max-size", "100", "--save-maps", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o" / "big_gradcam.png").size == (100, 50)
    assert np.load(tmp_path / "o" / "big_gradcam.npy").shape == (50, 100)


def test_torchvision_models_by_name_with_local_weights(tmp_path):
    import torchvision

    weights = tmp_path / "tv.pth"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=5).state_dict(), weights)
    result = run("explain", picture(tmp_path / "a.png"), "--model", "torchvision:resnet18", "--checkpoint", weights,
                 "--image-size", "32", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert int(result.output.split("class ")[1].split()[0]) < 5  # 5 classes, read from the weights
    usage_error(run("explain", picture(tmp_path / "a.png"), "--model", "torchvision:resnet1", "--out", tmp_path / "o"),
                "not a torchvision classification model. Similar names: torchvision:resnet18")


def test_methods_lists_descriptions_and_papers():
    from camzoo.methods.registry import describe

    result = run("methods")
    assert result.exit_code == 0
    assert "Grad-CAM: ReLU(sum_c mean_hw(dy/dA_c) * A_c) [Selvaraju et al. 2017]" in result.output
    info = describe("eigencam")
    assert info.paper == "Muhammad & Yeasin 2020" and info.summary.startswith("Eigen-CAM, as pytorch-grad-cam")
    assert describe("random").summary.startswith("seeded uniform noise") and describe("random").reference


def test_a_registered_method_is_described_from_its_class():
    from camzoo.methods import CAMMethod
    from camzoo.methods.registry import METHODS, describe, register

    @register
    class Doubled(CAMMethod):
        """Twice the channel mean. A second sentence that is not shown."""

        name = "hardening_doubled"
        paper = "Nobody et al. 2099"

        def compute(self, activations, gradients):
            return 2 * activations.mean(1)

    try:
        assert describe("hardening_doubled") == ("hardening_doubled", "Twice the channel mean", "Nobody et al. 2099", False)
        assert "hardening_doubled  Twice the channel mean [Nobody et al. 2099]" in run("methods").output
    finally:
        METHODS.remove("hardening_doubled")
