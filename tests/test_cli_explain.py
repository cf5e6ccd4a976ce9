"""`camzoo methods` and `camzoo explain` from the command line: folders of real photos, their overlays
and manifest, and bad input as one clear line (issues 13 and 24).

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

from camzoo.cli import main
from helpers import camzoo_checkpoint, cli, fail_writes, manifest_rows, picture, runtime_error, timm_weights, usage_error


CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def image_files(tmp_path):
    return [str(picture(tmp_path / f"{name}.png", size=(60, 40), seed=seed)) for seed, name in enumerate(("cat", "dog"))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A camzoo ResNet-8 (32 px, 3 named classes) saved as model.pt."""
    return camzoo_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", class_names=CLASSES)


def test_methods_command():
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0
    methods, references = result.output.split("reference methods")
    names = {line.split()[0] for line in methods.splitlines()[1:] if line.strip()}
    assert {"gradcam", "eigencam", "attention"} <= names
    refs = {line.split()[0] for line in references.splitlines()[1:] if line.strip()}
    assert {"random", "centre", "edges", "oracle"} <= refs and "random" not in names
    # one line per method, with a description and, where the class names one, the paper
    gradcam = next(line for line in methods.splitlines() if line.split()[:1] == ["gradcam"])
    assert "Grad-CAM" in gradcam and "[Selvaraju et al. 2017]" in gradcam
    assert "[Muhammad & Yeasin 2020]" in next(line for line in methods.splitlines() if "eigencam" in line)
    assert all(len(line.split()) > 2 for line in references.splitlines()[1:] if line.strip())


def test_explain_writes_one_overlay_per_image_with_a_checkpoint(image_files, tmp_path):
    checkpoint = timm_weights(tmp_path / "weights.pth", num_classes=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["explain", *image_files, "--model", "resnet10t", "--checkpoint", str(checkpoint),
         "--method", "eigencam", "--image-size", "64", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "->" in line]
    assert len(lines) == 2 and all("class " in line and "(p=" in line for line in lines)
    assert all(int(line.split("class ")[1].split()[0]) < 4 for line in lines)  # 4 classes read from the weights
    for stem in ("cat", "dog"):
        assert Image.open(out / f"{stem}_eigencam.png").size == (60, 40)  # the photo's own size and aspect


def test_explain_target_and_layer(image_files, tmp_path):
    result = CliRunner().invoke(
        main,
        ["explain", image_files[0], "--model", "resnet10t", "--target", "3", "--layer", "layer3",
         "--image-size", "48", "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 0, result.output
    assert "class 3 " in result.output
    assert "random weights" in result.output  # no checkpoint: the user is told the map means nothing


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no_such_net"], "not a timm model"),
        (["--model", "resnet10t", "--method", "nope"], "unknown method"),
        (["--model", "resnet10t", "--layer", "layer9"], "layer 'layer9' not found"),
        (["--model", "resnet10t", "--target", "5000"], "out of range"),
    ],
)
def test_explain_errors(image_files, tmp_path, extra, message):
    result = CliRunner().invoke(main, ["explain", image_files[0], *extra, "--image-size", "32", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output  # usage errors
    assert message in result.output and "Traceback" not in result.output


def test_explain_refuses_corrupt_and_unfit_checkpoints(image_files, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage")
    result = CliRunner().invoke(main, ["explain", image_files[0], "--model", "resnet10t", "--checkpoint", str(corrupt),
                                       "--out", str(tmp_path)])
    assert result.exit_code != 0 and "cannot load" in result.output
    unfit = tmp_path / "unfit.pth"
    torch.save({"fc.weight": torch.zeros(2, 7)}, unfit)
    result = CliRunner().invoke(main, ["explain", image_files[0], "--model", "resnet10t", "--checkpoint", str(unfit),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2 and "does not fit timm model 'resnet10t'" in result.output
    # one line naming the first keys at fault, not torch's list of all of them
    assert "missing keys: conv1.0.weight" in result.output and "fc.weight (2, 7) vs (2, 512)" in result.output
    assert "Error(s) in loading state_dict" not in result.output


def test_explain_unreadable_image(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    result = CliRunner().invoke(main, ["explain", str(broken), "--model", "resnet10t", "--image-size", "32",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "cannot read image" in result.output and "Usage:" not in result.output


def test_train_then_explain_with_the_camzoo_checkpoint(tmp_path):
    """`camzoo train` on the built-in dataset writes model.pt; `camzoo explain` reads it without --model."""
    out = tmp_path / "run"
    trained = CliRunner().invoke(main, [
        "train", "--kind", "lfi", "--backbone", "resnet8", "--dataset", "shapes", "--data-root", str(tmp_path / "cache"),
        "--image-size", "32", "--dataset-option", "num_classes=4", "--dataset-option", "num_images=64",
        "--epochs", "1", "--batch-size", "32", "--seed", "0", "--out", str(out), "--no-progress",
    ])
    assert trained.exit_code == 0, trained.output
    assert "test acc" in trained.output and (out / "model.pt").is_file()
    scene = picture(tmp_path / "scene.png", size=(32, 32), seed=1)
    explained = CliRunner().invoke(main, ["explain", str(scene), "--checkpoint", str(out / "model.pt"),
                                          "--method", "attention", "--out", str(tmp_path / "maps")])
    assert explained.exit_code == 0, explained.output
    from camzoo.data.shapes_gen import class_names

    # the class names travel inside the checkpoint
    assert any(f"class {name} " in explained.output for name in class_names(4)), explained.output
    assert Image.open(tmp_path / "maps" / "scene_attention.png").size == (32, 32)


def test_explain_needs_a_model_name_without_a_camzoo_checkpoint(image_files, tmp_path):
    result = CliRunner().invoke(main, ["explain", image_files[0], "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--model NAME is needed" in result.output


# --- what a photo's overlay and the manifest say ------------------------------------------------


def test_same_names_in_different_folders_get_different_outputs(tmp_path, checkpoint):
    first, second = picture(tmp_path / "a.png", seed=1), picture(tmp_path / "sub" / "a.png", seed=2)
    out = tmp_path / "d"
    result = cli("explain", first, second, "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a_gradcam.png", "sub/a_gradcam.png"]
    assert not np.array_equal(np.asarray(Image.open(out / "a_gradcam.png")), np.asarray(Image.open(out / "sub/a_gradcam.png")))


def test_folder_glob_batches_skip_unreadable_files_and_exit_1_with_a_summary(tmp_path, checkpoint):
    tree = tmp_path / "photos"
    for rel, size in (("x.png", (60, 40)), ("nested/y.jpg", (20, 50)), ("nested/deeper/z.png", (33, 33))):
        picture(tree / rel, size=size)
    (tree / "nested" / "broken.png").write_bytes(b"not an image")
    (tree / "notes.txt").write_text("ignored: not an image extension")
    extra = picture(tmp_path / "loose" / "w.png", size=(24, 24))
    out = tmp_path / "out"
    result = cli("explain", tree, str(tmp_path / "loose" / "*.png"), "--checkpoint", checkpoint, "--batch-size", "2",
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
    assert cli("explain", photo, "--checkpoint", checkpoint, "--alpha", "0", "--out", tmp_path / "o").exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "p_gradcam.png")), np.asarray(Image.open(photo)))


def test_max_size_bounds_the_photo_kept_for_overlays(tmp_path, checkpoint):
    photo = picture(tmp_path / "big.png", size=(400, 200))
    result = cli("explain", photo, "--checkpoint", checkpoint, "--max-size", "100", "--save-maps", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o" / "big_gradcam.png").size == (100, 50)
    assert np.load(tmp_path / "o" / "big_gradcam.npy").shape == (50, 100)


def test_a_file_name_that_is_not_utf8_is_explained_printed_and_listed(tmp_path, checkpoint):
    picture(tmp_path / "in" / "x.png")
    latin = os.fsdecode(os.fsencode(str(tmp_path / "in")) + b"/caf\xe9.png")
    os.rename(tmp_path / "in" / "x.png", latin)
    result = cli("explain", tmp_path / "in", "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "caf\\xe9" in result.output  # shown escaped, not a UnicodeEncodeError
    raw = (tmp_path / "out" / "manifest.csv").read_bytes()
    assert raw.count(b"caf\xe9") == 2  # input and overlay columns keep the file system's exact bytes
    assert os.path.exists(os.fsdecode(os.fsencode(str(tmp_path / "out")) + b"/caf\xe9_gradcam.png"))


def test_out_inside_an_input_folder_is_never_read_and_out_equal_to_it_is_refused(tmp_path, checkpoint):
    for i in range(2):
        picture(tmp_path / "photos" / f"p{i}.png", seed=i)
    for _ in range(2):
        result = cli("explain", tmp_path / "photos", "--checkpoint", checkpoint, "--out", tmp_path / "photos" / "maps")
        assert result.exit_code == 0 and "explained 2 of 2" in result.output, result.output
    assert not (tmp_path / "photos" / "maps" / "maps").exists() and len(manifest_rows(tmp_path / "photos" / "maps")) == 2
    refused = cli("explain", tmp_path / "photos", "--checkpoint", checkpoint, "--out", tmp_path / "photos")
    assert refused.exit_code == 2 and "--out" in refused.output and "input folder" in refused.output


def test_save_maps_on_a_full_disk_names_the_file_and_the_cause_and_keeps_the_manifest(tmp_path, checkpoint, monkeypatch):
    picture(tmp_path / "a.png")
    fail_writes(monkeypatch, ".npy")
    result = cli("explain", tmp_path / "a.png", "--checkpoint", checkpoint, "--save-maps", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert "a_gradcam.npy" in line and "no space left" in line and "rerun" in line
    assert (tmp_path / "o" / "manifest.csv").is_file() and not list((tmp_path / "o").glob(".*.tmp"))


# --- models, targets and options: the right result or one usage line -----------------------------


def test_repeated_targets_apply_one_per_image_in_order_or_are_refused(tmp_path, checkpoint):
    files = [picture(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    result = cli("explain", *files[:2], "--checkpoint", checkpoint, "--target", "0", "--target", "fox", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "0.png: gradcam class cat " in result.output and "1.png: gradcam class fox " in result.output
    usage_error(cli("explain", *files, "--checkpoint", checkpoint, "--target", "0", "--target", "1", "--out", tmp_path / "o"),
                "got 2 targets for 3 images")
    usage_error(cli("explain", files[0], "--checkpoint", checkpoint, "--target", "wolf", "--out", tmp_path / "o"),
                "'wolf' is not a class of this model; classes: cat, dog, fox")
    usage_error(cli("explain", files[0], "--checkpoint", checkpoint, "--target", "3", "--out", tmp_path / "o"),
                "target 3 is out of range for a model with 3 classes")


def test_class_names_without_names_in_the_model_are_refused(tmp_path):
    usage_error(cli("explain", picture(tmp_path / "a.png"), "--model", "resnet10t", "--image-size", "32",
                    "--target", "cat", "--out", tmp_path / "o"), "this model has no class names")


@pytest.mark.parametrize("count", ["0", "-3"])
def test_num_classes_below_one_is_refused(tmp_path, count):
    usage_error(cli("explain", picture(tmp_path / "a.png"), "--model", "resnet10t", "--num-classes", count,
                    "--out", tmp_path / "o"), "number of classes must be an integer >= 1")


def test_a_model_name_that_contradicts_the_camzoo_checkpoint_is_refused(tmp_path, checkpoint):
    usage_error(cli("explain", picture(tmp_path / "a.png"), "--model", "resnet18", "--checkpoint", checkpoint,
                    "--out", tmp_path / "o"), "is a camzoo baseline model on backbone 'resnet8', not 'resnet18'")
    usage_error(cli("explain", picture(tmp_path / "a.png"), "--num-classes", "5", "--checkpoint", checkpoint,
                    "--out", tmp_path / "o"), "has 3 classes, not 5")
    ok = cli("explain", picture(tmp_path / "a.png"), "--model", "resnet8", "--checkpoint", checkpoint, "--out", tmp_path / "o")
    assert ok.exit_code == 0, ok.output


def test_torchvision_models_by_name_with_local_weights(tmp_path):
    import torchvision

    weights = tmp_path / "tv.pth"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=5).state_dict(), weights)
    result = cli("explain", picture(tmp_path / "a.png"), "--model", "torchvision:resnet18", "--checkpoint", weights,
                 "--image-size", "32", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert int(result.output.split("class ")[1].split()[0]) < 5  # 5 classes, read from the weights
    usage_error(cli("explain", picture(tmp_path / "a.png"), "--model", "torchvision:resnet1", "--out", tmp_path / "o"),
                "not a torchvision classification model. Similar names: torchvision:resnet18")


def test_bad_option_values_are_usage_errors(tmp_path, checkpoint):
    image = picture(tmp_path / "a.png")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--image-size", "0", "--out", tmp_path / "o"),
                "0 is not in the range x>=1")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--device", "gpu", "--out", tmp_path / "o"),
                "'gpu' is not a device; use auto, cpu, cuda or cuda:N")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--colormap", "nope", "--out", tmp_path / "o"),
                "unknown colormap 'nope'")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--method", "oracle", "--out", tmp_path / "o"),
                "needs masks or boxes")
    usage_error(cli("explain", tmp_path / "nothing_here", "--checkpoint", checkpoint, "--out", tmp_path / "o"),
                "does not exist")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--layer", "fc", "--out", tmp_path / "o"),
                "naming a module with a (B,C,h,w) output")
    usage_error(cli("explain", image, "--checkpoint", checkpoint, "--layer", "nope", "--out", tmp_path / "o"),
                "Invalid value for --layer")


def test_method_options_reach_captum_and_bad_ones_are_one_usage_line(tmp_path, checkpoint):
    from camzoo.cli.options import parse_options

    assert parse_options(["a=(3,4,4)", "b=16", "c=abs", "d='x'"], "--method-option") == {"a": (3, 4, 4), "b": 16, "c": "abs",
                                                                                        "d": "x"}
    image = picture(tmp_path / "a.png")
    base = [image, "--checkpoint", checkpoint, "--method", "captum:Occlusion", "--out", tmp_path / "o"]
    ok = cli("explain", *base, "--method-option", "sliding_window_shapes=(3,4,4)", "--method-option", "strides=2")
    assert ok.exit_code == 0 and "explained 1 of 1" in ok.output, ok.output
    for extra, words in ((["--method-option", "window=(3,4,4)"], "window"), (["--method-option", "noequals"], "KEY=VALUE"),
                         ([], "--method-option")):
        bad = cli("explain", *base, *extra)
        assert bad.exit_code == 2 and words in bad.output and "Traceback" not in bad.output, bad.output


def test_smoothing_options_from_the_command_line(tmp_path, checkpoint):
    """--method-option eigen_smooth=True / aug_smooth=True reach the method; one that does not apply is one line."""
    image = picture(tmp_path / "a.png")
    base = [image, "--checkpoint", checkpoint, "--method", "gradcam"]
    outs = {}
    for option in ("eigen_smooth=False", "eigen_smooth=True", "aug_smooth=True"):
        out = tmp_path / option.replace("=", "_")
        result = cli("explain", *base, "--out", out, "--method-option", option, "--save-maps")
        assert result.exit_code == 0, result.output
        (saved,) = out.rglob("*.npy")
        outs[option] = np.load(saved).astype(np.float32)
    assert all(np.abs(outs[option] - outs["eigen_smooth=False"]).max() > 1e-3 for option in outs if "True" in option)
    bad = cli("explain", image, "--checkpoint", checkpoint, "--method", "eigencam", "--out", tmp_path / "bad",
              "--method-option", "eigen_smooth=True")
    assert bad.exit_code == 2 and "eigen_smooth" in bad.output and "Traceback" not in bad.output, bad.output
