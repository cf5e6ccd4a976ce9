"""`camzoo methods` and `camzoo explain` from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from camzoo.cli import main


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("cat", "dog"):
        path = tmp_path / f"{name}.png"
        Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


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
    import timm

    checkpoint = tmp_path / "weights.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=4).state_dict(), checkpoint)
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
    picture = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)).save(picture)
    explained = CliRunner().invoke(main, ["explain", str(picture), "--checkpoint", str(out / "model.pt"),
                                          "--method", "attention", "--out", str(tmp_path / "maps")])
    assert explained.exit_code == 0, explained.output
    from camzoo.data.shapes_gen import class_names

    # the class names travel inside the checkpoint
    assert any(f"class {name} " in explained.output for name in class_names(4)), explained.output
    assert Image.open(tmp_path / "maps" / "scene_attention.png").size == (32, 32)


def test_explain_needs_a_model_name_without_a_camzoo_checkpoint(image_files, tmp_path):
    result = CliRunner().invoke(main, ["explain", image_files[0], "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--model NAME is needed" in result.output
