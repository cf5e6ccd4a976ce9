"""Issue 13, Python side: inputs that used to be silently wrong or end in a torch traceback.

Each test names the input and asserts either the right result or one clear error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camzoo
from camzoo.inputs import collect_image_files, load_image, output_names, prepare_images


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return camzoo.build_model("baseline", "resnet8", num_classes=3, class_names=["cat", "dog", "fox"]).eval()


@pytest.fixture(scope="module")
def NoCfg(benchmark_script):
    """A torchvision-like model without pretrained_cfg: the one benchmarks/bad_inputs.py feeds inputs to."""
    return benchmark_script("bad_inputs").NoCfg


# --- silently wrong before ---------------------------------------------------------------------


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


def test_image_size_resizes_tensor_inputs(tiny):
    result = camzoo.explain(tiny, torch.randn(2, 3, 40, 24), image_size=32)
    assert result.maps.shape == (2, 32, 32) and result.inputs.shape[-2:] == (32, 32)
    pair = camzoo.explain(tiny, [torch.randn(3, 40, 24), torch.randn(3, 20, 20)], image_size=(16, 24))
    assert pair.maps.shape == (2, 16, 24)


def test_a_one_logit_model_scores_with_the_sigmoid(NoCfg):
    torch.manual_seed(0)
    model = NoCfg(outputs=1).eval()
    images = torch.randn(3, 3, 16, 16)
    result = camzoo.explain(model, images)
    with torch.no_grad():
        expected = torch.sigmoid(model(images)[:, 0])
    assert result.targets.tolist() == [0, 0, 0]
    assert torch.allclose(result.scores, expected) and not torch.all(result.scores == 1.0)


def test_a_headless_model_is_refused():
    import timm

    headless = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="no classifier head"):
        camzoo.explain(headless, torch.randn(1, 3, 32, 32))


# --- tracebacks before -------------------------------------------------------------------------


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
def test_bad_inputs_give_one_clear_error(img, kwargs, error, message, NoCfg):
    model = NoCfg().eval()
    with pytest.raises(error, match=message):
        camzoo.explain(model, img, **kwargs)


def test_targets_by_class_name(tiny):
    images = torch.randn(2, 3, 32, 32)
    assert camzoo.explain(tiny, images, target="dog").targets.tolist() == [1, 1]
    assert camzoo.explain(tiny, images, target=["fox", 0]).targets.tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"not one of the model's class names. Did you mean 'dog'"):
        camzoo.explain(tiny, images, target="dgo")


def test_label_out_of_range_is_an_index_error(tiny):
    result = camzoo.explain(tiny, torch.randn(2, 3, 32, 32))
    assert result.label(-1) == result.label(1)
    with pytest.raises(IndexError, match="image index 2 is out of range for an explanation of 2 images"):
        result.label(2)


def test_a_model_that_fails_on_the_input_says_so_in_one_short_line(NoCfg):
    model = NoCfg(kernel=5).eval()
    with pytest.raises(ValueError, match=r"the model failed on a batch of shape \(1, 3, 2, 2\)") as info:
        camzoo.explain(model, torch.randn(1, 3, 2, 2))
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_grayscale_arrays_are_accepted(NoCfg):
    model = NoCfg().eval()
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    assert camzoo.explain(model, gray).maps.shape == (1, 8, 8)


# --- bounded memory ----------------------------------------------------------------------------


def test_inputs_at_their_own_size_are_capped_at_max_size_with_a_warning(tmp_path, NoCfg):
    model = NoCfg().eval()
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


def test_pil_decompression_bomb_limit_stays_on(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2 * 1000: PIL's error threshold
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_image(tmp_path / "bomb.png")


# --- overlays and files ------------------------------------------------------------------------


def test_overlay_at_the_original_size_and_aspect_with_a_colormap(tiny):
    result = camzoo.explain(tiny, torch.randn(1, 3, 32, 32))
    photo = Image.new("RGB", (90, 30), (10, 20, 30))
    assert result.overlay(0, image=photo).size == (90, 30)
    assert np.array_equal(np.asarray(result.overlay(0, alpha=0.0, image=photo)), np.asarray(photo))
    viridis = np.asarray(result.overlay(0, alpha=1.0, colormap="viridis"))
    jet = np.asarray(result.overlay(0, alpha=1.0))
    assert viridis.shape == jet.shape and not np.array_equal(viridis, jet)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        result.overlay(0, colormap="nope")
    assert result.map_at(0, (30, 90)).shape == (30, 90)


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


def test_prepare_images_keeps_pixels_of_small_images_unchanged(tiny):
    pixels = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    batch = prepare_images(pixels, tiny)
    mean = torch.tensor(tiny.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(tiny.pretrained_cfg["std"]).view(3, 1, 1)
    assert torch.allclose(batch[0], (torch.tensor(pixels).permute(2, 0, 1) / 255 - mean) / std, atol=1e-6)
