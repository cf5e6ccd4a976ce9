"""camzoo.inputs: the images camzoo.explain and ``camzoo explain`` take (files, folders, globs, arrays,
tensors), read as a user means them or refused in one clear error.

Each test names the input (issues 13 and 24: each was silently wrong or a torch traceback before)
and asserts either the right result or one clear error.
"""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camzoo
from camzoo.inputs import FrameWarning, collect_image_files, load_image, output_names, prepare_images
from helpers import camzoo_checkpoint, cli, manifest_rows, no_cfg_model, picture, resnet8


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return resnet8(class_names=["cat", "dog", "fox"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return camzoo_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


# --- files -------------------------------------------------------------------------------------


def test_16_bit_grayscale_png_is_scaled_by_its_bit_depth_not_clipped_to_white(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    pixels = np.asarray(load_image(tmp_path / "g16.png"))
    assert pixels.shape == (4, 4, 3)
    assert pixels[0, :, 0].tolist() == [0, 64, 128, 255]  # PIL's own convert("RGB") gives 0, 255, 255, 255


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    raw = np.zeros((20, 40, 3), dtype=np.uint8)
    raw[:, :20] = (255, 0, 0)  # stored: red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(raw).save(tmp_path / f"turned{suffix}", exif=exif)
    for max_size in (None, 16):
        upright = np.asarray(load_image(tmp_path / f"turned{suffix}", max_size=max_size)).astype(int)
        height, width = upright.shape[:2]
        assert height > width, "a 40x20 file tagged 'rotate 90' must load as 20 wide, 40 tall"
        assert upright[: height // 4, :, 0].mean() > 200 and upright[-height // 4:, :, 0].mean() < 60  # red on top


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_animated_and_multi_page_files_say_only_the_first_frame_is_explained(tmp_path, checkpoint, suffix):
    frames = [Image.new("RGB", (24, 16), colour) for colour in ("red", "lime", "blue")]
    frames[0].save(tmp_path / f"anim{suffix}", save_all=True, append_images=frames[1:])
    with pytest.warns(FrameWarning, match="3 frames"):
        image = load_image(tmp_path / f"anim{suffix}")
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0]  # the first frame
    result = cli("explain", tmp_path / f"anim{suffix}", "--checkpoint", checkpoint, "--out", tmp_path / "o")
    assert result.exit_code == 0 and "only the first is explained" in result.output


def test_pil_decompression_bomb_limit_stays_on(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2 * 1000: PIL's error threshold
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_image(tmp_path / "bomb.png")


def test_collect_files_folders_and_globs_and_unique_output_names(tmp_path):
    for rel in ("a.png", "sub/a.png", "sub/a.jpg", "sub/deep/b.JPEG", "sub/notes.txt", "sub/.hidden.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    files = collect_image_files([tmp_path / "a.png", tmp_path / "sub", str(tmp_path / "*.png")])
    names = sorted(p.relative_to(tmp_path).as_posix() for p in files)
    assert names == ["a.png", "sub/a.jpg", "sub/a.png", "sub/deep/b.JPEG"]  # de-duplicated, images only
    outs = [o.as_posix() for o in output_names(files)]
    assert len(set(outs)) == len(outs)
    assert dict(zip((p.relative_to(tmp_path).as_posix() for p in files), outs)) == {
        "a.png": "a", "sub/a.jpg": "sub/a.jpg", "sub/a.png": "sub/a.png", "sub/deep/b.JPEG": "sub/deep/b"}
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        collect_image_files([str(tmp_path / "*.txt")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_image_files([tmp_path / "missing.png"])


def test_a_recursive_glob_over_a_symlink_loop_ends_and_finds_each_file_once(tmp_path):
    picture(tmp_path / "dir" / "sub" / "a.png")
    os.symlink(".", tmp_path / "dir" / "loop")
    os.symlink("..", tmp_path / "dir" / "sub" / "up")
    signal.alarm(30)  # glob.glob took minutes here
    try:
        found = collect_image_files([f"{tmp_path}/dir/**/*.png"])
        walked = collect_image_files([tmp_path / "dir"])
    finally:
        signal.alarm(0)
    assert [p.resolve() for p in found] == [p.resolve() for p in walked] == [(tmp_path / "dir/sub/a.png").resolve()]


def test_folders_take_avif_list_dangling_links_and_pipes_and_skip_hidden_folders(tmp_path, checkpoint):
    folder = tmp_path / "in"
    picture(folder / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "b.avif")
    picture(folder / ".cache" / "hidden.png")
    os.symlink("gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.png")
    skipped: list = []
    files = collect_image_files([folder], skipped=skipped)
    assert [p.name for p in files] == ["a.png", "b.avif"]
    assert {p.name: why.split(",")[0] for p, why in skipped} == {
        "dangling.png": "is a symbolic link to 'gone.png'", "pipe.png": "is a named pipe"}
    signal.alarm(60)  # opening the pipe would block forever
    try:
        result = cli("explain", folder, "--checkpoint", checkpoint, "--out", tmp_path / "o")
    finally:
        signal.alarm(0)
    assert result.exit_code == 1 and "explained 2 of 4" in result.output
    assert "dangling.png: is a symbolic link" in result.output and "pipe.png: is a named pipe" in result.output
    assert not any("hidden" in row for row in manifest_rows(tmp_path / "o"))
    named = cli("explain", folder / "dangling.png", "--checkpoint", checkpoint, "--out", tmp_path / "o")
    assert named.exit_code == 2 and "gone.png" in named.output and "does not exist" in named.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert collect_image_files([tmp_path / "in" / "b.avif"]) == [folder / "b.avif"]


# --- arrays and tensors ------------------------------------------------------------------------


def test_image_size_resizes_tensor_inputs(tiny):
    result = camzoo.explain(tiny, torch.randn(2, 3, 40, 24), image_size=32)
    assert result.maps.shape == (2, 32, 32) and result.inputs.shape[-2:] == (32, 32)
    pair = camzoo.explain(tiny, [torch.randn(3, 40, 24), torch.randn(3, 20, 20)], image_size=(16, 24))
    assert pair.maps.shape == (2, 16, 24)


@pytest.mark.parametrize(
    "img, kwargs, error, message",
    [
        (np.zeros((0, 0, 3), np.uint8), {}, ValueError, "at least 1x1"),
        (torch.zeros(1, 3, 0, 5), {}, ValueError, "at least 1x1"),
        ([torch.randn(3, 8, 8), torch.randn(3, 9, 9)], {}, ValueError, "different sizes"),
        ([torch.randn(3, 8, 8), np.zeros((8, 8, 3), np.uint8)], {}, TypeError, "only tensors or only pixel"),
        (torch.randn(3, 8, 8), {"image_size": 0}, ValueError, "image_size must be"),
        (torch.randn(3, 8, 8), {"image_size": (8, -1)}, ValueError, "image_size must be"),
        (torch.randn(3, 8, 8), {"max_size": 0}, ValueError, "max_size must be"),
        (torch.randn(3, 8, 8), {"target": "cat"}, ValueError, "has no class names"),
        (torch.randn(3, 8, 8), {"target": [[0.5]]}, TypeError, "target must be an int"),
    ],
)
def test_bad_inputs_give_one_clear_error(img, kwargs, error, message):
    model = no_cfg_model().eval()
    with pytest.raises(error, match=message):
        camzoo.explain(model, img, **kwargs)


def test_grayscale_arrays_are_accepted():
    model = no_cfg_model().eval()
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    assert camzoo.explain(model, gray).maps.shape == (1, 8, 8)


def test_a_one_channel_timm_model_explains_a_grayscale_png_from_the_api_and_the_cli(tmp_path):
    import timm

    model = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=3).eval()
    gray = picture(tmp_path / "gray.png", gray=True)
    result = camzoo.explain(model, gray, image_size=(30, 40))
    pixels = np.asarray(Image.open(gray), np.float32) / 255.0
    mean, std = np.mean(model.pretrained_cfg["mean"]), np.mean(model.pretrained_cfg["std"])
    assert tuple(result.inputs.shape) == (1, 1, 30, 40)
    assert np.allclose(result.inputs[0, 0].numpy(), (pixels - mean) / std, atol=1e-5)  # no resize: same pixels
    assert result.overlay(0).size == (40, 30)
    torch.save(model.state_dict(), tmp_path / "gray.pth")
    command = cli("explain", gray, "--model", "resnet10t", "--checkpoint", tmp_path / "gray.pth", "--image-size", "32",
                  "--out", tmp_path / "o")
    assert command.exit_code == 0, command.output
    assert Image.open(tmp_path / "o" / "gray_gradcam.png").size == (40, 30)
    with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
        camzoo.explain(model, torch.randn(1, 3, 32, 32))


def test_prepare_images_keeps_pixels_of_small_images_unchanged(tiny):
    pixels = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    batch = prepare_images(pixels, tiny)
    mean = torch.tensor(tiny.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(tiny.pretrained_cfg["std"]).view(3, 1, 1)
    assert torch.allclose(batch[0], (torch.tensor(pixels).permute(2, 0, 1) / 255 - mean) / std, atol=1e-6)


# --- bounded memory ----------------------------------------------------------------------------


def test_inputs_at_their_own_size_are_capped_at_max_size_with_a_warning(tmp_path):
    model = no_cfg_model().eval()
    big = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    for form in (big, Image.fromarray(big), tmp_path / "big.png", torch.randn(3, 200, 300)):
        with pytest.warns(UserWarning, match="exceeds max_size=64"):
            result = camzoo.explain(model, form, max_size=64)
        assert result.maps.shape == (1, 43, 64), type(form)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert camzoo.explain(model, big, max_size=None).maps.shape == (1, 200, 300)
        # with a target size, a huge input is pre-shrunk silently: the result is at image_size anyway
        assert camzoo.explain(model, big, max_size=64, image_size=32).maps.shape == (1, 32, 32)
