"""Control rows (random, centre, edges, oracle) against closed forms written here and scipy.

Why a hand-built model: the controls must not depend on what the model learned, only on its shapes
and logits, so a tiny seeded CNN (16x20 px, two convolutions) exercises every path in well under a
second. References are computed independently of camzoo: numpy Gaussians, scipy.ndimage.sobel,
explicit box rasterisation by the pixel-centre rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from torch import nn

import camzoo
from camzoo.methods import get_method, method_names, reference_method_names
from camzoo.methods.base import CAMMethod, upsample_and_normalise
from camzoo.methods.controls import RandomMap
from helpers import minmax

CONTROLS = ["centre", "edges", "oracle", "random"]
HEIGHT, WIDTH = 15, 22  # odd/even and non-square: catches a swapped axis or a wrong centre


class TinyCNN(nn.Module):
    def __init__(self, seed: int = 0, classes: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def model() -> TinyCNN:
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(5, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(7))


def some_mask(batch: int = 5) -> torch.Tensor:
    mask = torch.rand(batch, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3)) > 0.6
    mask[1] = False  # an image without object pixels
    return mask


def run(model: nn.Module, images: torch.Tensor, method: str, **kwargs) -> camzoo.Explanation:
    if method == "oracle":
        kwargs.setdefault("ground_truth", {"mask": some_mask(images.shape[0])})
    return camzoo.explain(model, images, method=method, **kwargs)


# --- registry ---------------------------------------------------------------------------------------
def test_registry_lists_controls_apart_and_flags_them():
    assert reference_method_names() == CONTROLS
    assert method_names(reference=True) == CONTROLS
    explainers = method_names(reference=False)
    assert {"gradcam", "eigencam", "attention"} <= set(explainers)
    assert not set(explainers) & set(CONTROLS)
    assert method_names() == sorted(explainers + CONTROLS) == camzoo.list_methods()
    for name in CONTROLS:
        assert get_method(name).reference is True
        assert get_method(name).needs_ground_truth is (name == "oracle")
    for name in explainers:
        assert get_method(name).reference is False and get_method(name).needs_ground_truth is False
    assert CAMMethod.reference is False and CAMMethod.needs_ground_truth is False
    with pytest.raises(TypeError, match="reference"):
        method_names(reference="yes")  # type: ignore[arg-type]


# --- what every control shares with the CAM pipeline ------------------------------------------------
@pytest.mark.parametrize("method", CONTROLS)
def test_targets_and_scores_equal_a_plain_forward(model, images, method):
    with torch.no_grad():
        logits = model(images)
    probabilities = logits.softmax(1)
    exp = run(model, images, method)
    assert exp.method == method
    assert torch.equal(exp.targets, logits.argmax(1))
    torch.testing.assert_close(exp.scores, probabilities.gather(1, exp.targets[:, None])[:, 0])
    assert exp.maps.shape == (5, HEIGHT, WIDTH) and exp.maps.dtype == torch.float32
    assert exp.maps.min() >= 0 and exp.maps.max() <= 1

    given = torch.tensor([2, 0, 1, 1, 0])
    exp = run(model, images, method, target=given)
    assert torch.equal(exp.targets, given)
    torch.testing.assert_close(exp.scores, probabilities[torch.arange(5), given])


@pytest.mark.parametrize("method", CONTROLS)
def test_leaves_no_hook_and_restores_train_mode(images, method):
    model = TinyCNN().train()
    run(model, images, method, batch_size=2)
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["centre", "edges", "oracle"])
def test_input_controls_refuse_a_layer(model, images, method):
    with pytest.raises(ValueError, match="not a layer"):
        run(model, images, method, layer="features")
    assert run(model, images, method).layer is None


# --- centre -------------------------------------------------------------------------------------------
def test_centre_is_the_min_maxed_gaussian_at_the_image_centre(model, images):
    exp = run(model, images, "centre")
    rows = np.arange(HEIGHT) - (HEIGHT - 1) / 2
    cols = np.arange(WIDTH) - (WIDTH - 1) / 2
    sigma = min(HEIGHT, WIDTH) / 4
    gaussian = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * sigma**2))
    expected = minmax(gaussian)
    assert exp.raw.shape == (5, HEIGHT, WIDTH)  # computed at input resolution: resize is the identity
    for i in range(5):
        np.testing.assert_allclose(exp.maps[i].numpy(), expected, atol=1e-6)
    assert torch.equal(exp.maps, exp.maps.flip(-1)) and torch.equal(exp.maps, exp.maps.flip(-2))


# --- edges --------------------------------------------------------------------------------------------
def test_edges_is_the_summed_per_channel_sobel_magnitude_of_scipy(model, images):
    exp = run(model, images, "edges")
    pixels = images.double().numpy()
    # per 2-D channel: scipy's sobel on the 4-D array would also smooth across images and channels
    magnitude = np.stack(
        [
            np.stack([np.hypot(ndimage.sobel(c, axis=1), ndimage.sobel(c, axis=0)) for c in image])
            for image in pixels
        ]
    ).sum(axis=1)
    np.testing.assert_allclose(exp.raw.numpy(), magnitude, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(exp.maps.numpy(), minmax(magnitude), atol=1e-5)


def test_edges_of_a_vertical_step_and_of_a_flat_image(model):
    """Closed form: a step of height d between columns 9 and 10 gives |gx| = 4d on those two columns."""
    step = torch.zeros(2, 3, HEIGHT, WIDTH)
    step[0, :, :, 10:] = torch.tensor([1.0, 2.0, -0.5])[:, None, None]
    exp = run(model, step, "edges")
    expected = torch.zeros(HEIGHT, WIDTH)
    expected[:, 9:11] = 4 * (1.0 + 2.0 + 0.5)
    torch.testing.assert_close(exp.raw[0], expected)
    assert torch.equal(exp.maps[1], torch.zeros(HEIGHT, WIDTH))  # a flat image has no edge: zeros, not NaN


# --- oracle -------------------------------------------------------------------------------------------
def test_oracle_is_the_mask_exactly(model, images):
    mask = some_mask()
    exp = camzoo.explain(model, images, method="oracle", ground_truth={"mask": mask})
    assert torch.equal(exp.maps, mask.float())
    assert torch.equal(exp.raw, mask.float())
    assert not exp.maps[1].any()  # empty mask -> all-zero map


def reference_box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel (r, c) is inside a box when its centre (c+0.5, r+0.5) lies inside (edges included)."""
    out = np.zeros((len(boxes), height, width), dtype=bool)
    centres_r, centres_c = np.mgrid[0:height, 0:width] + 0.5
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            if np.isnan(x0):
                continue
            out[i] |= (centres_c >= x0) & (centres_c <= x1) & (centres_r >= y0) & (centres_r <= y1)
    return out


def test_oracle_from_boxes_is_the_union_of_rectangles(model, images):
    nan = float("nan")
    boxes = torch.tensor(
        [
            [[0, 0, 4, 3], [2, 1, 9, 6], [nan, nan, nan, nan]],  # overlapping pair + padding
            [[nan, nan, nan, nan]] * 3,  # no box at all -> zeros
            [[3.4, 2.6, 7.5, 9.49], [20, 12, 22, 15], [nan, nan, nan, nan]],  # fractional, at the border
            [[0, 0, WIDTH, HEIGHT], [nan, nan, nan, nan], [nan, nan, nan, nan]],  # the whole image
            [[5, 5, 6, 6], [10, 2, 11, 14], [1, 10, 21, 11]],
        ]
    )
    exp = camzoo.explain(model, images, method="oracle", ground_truth={"boxes": boxes}, batch_size=2)
    expected = reference_box_masks(boxes.numpy(), HEIGHT, WIDTH)
    assert expected[0].sum() == 4 * 3 + 7 * 5 - 2 * 2  # union, not sum, of the overlapping boxes
    assert not expected[1].any() and expected[3].all()
    assert np.array_equal(exp.raw.numpy(), expected.astype(np.float32))
    # the whole-image box is a constant map: min-max turns it into zeros, like any constant map
    assert np.array_equal(exp.maps.numpy(), minmax(expected.astype(np.float32)))


def test_oracle_prefers_the_mask_over_boxes_and_chunks_ground_truth(model, images):
    mask = some_mask()
    boxes = torch.tensor([[[0.0, 0.0, 5.0, 5.0]]]).expand(5, 1, 4)
    whole = camzoo.explain(model, images, method="oracle", ground_truth={"mask": mask, "boxes": boxes})
    chunked = camzoo.explain(model, images, method="oracle", ground_truth={"mask": mask}, batch_size=2)
    assert torch.equal(whole.maps, mask.float()) and torch.equal(chunked.maps, mask.float())
    # a None entry counts as absent, so datasets with only boxes can pass both keys
    only_boxes = camzoo.explain(model, images, method="oracle", ground_truth={"mask": None, "boxes": boxes})
    assert torch.equal(only_boxes.raw[:, :5, :5], torch.ones(5, 5, 5)) and only_boxes.raw.sum() == 5 * 25


@pytest.mark.parametrize("ground_truth", [None, {}, {"mask": None, "boxes": None}])
def test_oracle_without_ground_truth_says_what_to_pass(model, images, ground_truth):
    with pytest.raises(ValueError, match=r"needs ground truth: pass ground_truth=\{'mask'"):
        camzoo.explain(model, images, method="oracle", ground_truth=ground_truth)


@pytest.mark.parametrize("method", ["oracle", "gradcam", "random"])
def test_ground_truth_is_validated_for_every_method(model, images, method):
    with pytest.raises(ValueError, match=r"must be \(B,H,W\) = \(5, 15, 22\)"):
        camzoo.explain(model, images, method=method, ground_truth={"mask": some_mask(4)})
    with pytest.raises(ValueError, match="images' resolution"):
        camzoo.explain(model, images, method=method, ground_truth={"mask": torch.zeros(5, 15, 21, dtype=torch.bool)})
    with pytest.raises(ValueError, match="B = 5"):
        camzoo.explain(model, images, method=method, ground_truth={"boxes": torch.zeros(4, 1, 4)})
    with pytest.raises(ValueError, match="outside"):
        camzoo.explain(model, images, method=method, ground_truth={"boxes": torch.tensor([[[0.0, 0, 30, 5]]] * 5)})
    with pytest.raises(ValueError, match="unknown ground_truth key"):
        camzoo.explain(model, images, method=method, ground_truth={"masks": some_mask()})
    with pytest.raises(TypeError, match="must be a dict"):
        camzoo.explain(model, images, method=method, ground_truth=some_mask())  # type: ignore[arg-type]


def test_methods_without_ground_truth_ignore_it(model, images):
    plain = camzoo.explain(model, images, method="gradcam")
    given = camzoo.explain(model, images, method="gradcam", ground_truth={"mask": some_mask()})
    assert torch.equal(plain.maps, given.maps)


# --- random -------------------------------------------------------------------------------------------
def layer_output_shape(model: nn.Module, images: torch.Tensor, layer: str) -> tuple[int, ...]:
    shapes = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        model(images)
    handle.remove()
    return shapes[0]


@pytest.mark.parametrize("layer", [None, "features.0"])
def test_random_is_noise_at_the_layers_resolution_through_the_cam_pipeline(model, images, layer):
    exp = camzoo.explain(model, images, method="random", layer=layer)
    name = layer or "features"
    assert exp.layer == name
    batch, _, h, w = layer_output_shape(model, images, name)
    assert exp.raw.shape == (batch, h, w)
    if layer is None:
        assert (h, w) == (8, 11)  # the final map, coarser than the input: the resize is real
    assert exp.raw.min() >= 0 and exp.raw.max() < 1
    assert exp.maps.min() == 0 and exp.maps.max() == 1
    # exactly the CAM pipeline: bilinear resize of exp.raw, then per-image min-max
    assert torch.equal(exp.maps, upsample_and_normalise(exp.raw, (HEIGHT, WIDTH)))
    flat = exp.raw.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(batch) for j in range(i + 1, batch))


def test_random_is_reproducible_and_independent_of_batching(model, images):
    first = camzoo.explain(model, images, method="random")
    assert torch.equal(first.raw, camzoo.explain(model, images, method="random").raw)
    assert torch.equal(first.raw, camzoo.explain(model, images, method="random", batch_size=2).raw)
    assert torch.equal(first.raw.flip(0), camzoo.explain(model, images.flip(0), method="random").raw)
    assert torch.equal(first.raw[2:4], camzoo.explain(model, images[2:4], method="random").raw)
    repeated = camzoo.explain(model, images[[1, 1]], method="random").raw
    assert torch.equal(repeated[0], repeated[1])  # the same image gets the same noise


def test_random_changes_with_seed_model_and_pixels(model, images):
    base = RandomMap(model)(images).raw
    assert not torch.equal(base, RandomMap(model, seed=1)(images).raw)
    assert not torch.equal(base, RandomMap(TinyCNN(seed=1).eval())(images).raw)  # another training seed
    nudged = images.clone()
    nudged[0, 0, 0, 0] = torch.nextafter(nudged[0, 0, 0, 0], torch.tensor(10.0))
    changed = RandomMap(model)(nudged).raw
    assert not torch.equal(base[0], changed[0]) and torch.equal(base[1:], changed[1:])
    with pytest.raises(ValueError, match="seed"):
        RandomMap(model, seed=-1)


def test_random_noise_is_uniform_and_uncorrelated(model):
    many = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    raw = camzoo.explain(model, many, method="random", layer="features.0").raw  # 64 x 32 x 32 cells
    values = raw.flatten().double().numpy()
    assert stats.kstest(values, "uniform").pvalue > 1e-3
    neighbours = np.corrcoef(raw[..., :-1].flatten().numpy(), raw[..., 1:].flatten().numpy())[0, 1]
    across_images = np.corrcoef(raw[:-1].flatten().numpy(), raw[1:].flatten().numpy())[0, 1]
    assert abs(neighbours) < 0.02 and abs(across_images) < 0.02  # 1/sqrt(64k) ~ 0.004
