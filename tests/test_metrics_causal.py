"""Deletion/insertion and Average Drop/Increase: closed forms, an independent per-image reference, and
the engineering promises (chunking, ties, model mode, no autograd, clear errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import nn

from camzoo.metrics import average_drop_increase, deletion_insertion, rise_blur, rise_blur_kernel, saliency_rank

SIZE, OBJECT = 16, (slice(4, 12), slice(2, 10))  # 8x8 = 64 object pixels of 256
AREA = 64
SHARPNESS = 6.0


class ObjectFractionModel(nn.Module):
    """Two logits [L*s, 0] where s is the share of the object still showing (channel 0 == 1 there).

    Its softmax score for class 0 is sigmoid(L * s): a known function of the object's pixel fraction.
    """

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(SIZE, SIZE)
        mask[OBJECT] = 1
        self.register_buffer("mask", mask)
        self.unused = nn.Linear(1, 1)  # gives the model a parameter (and so a device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        share = (x[:, 0] * self.mask).flatten(1).sum(1) / AREA
        return torch.stack([SHARPNESS * share, torch.zeros_like(share)], 1)


def object_images(batch: int = 2) -> torch.Tensor:
    images = torch.zeros(batch, 3, SIZE, SIZE)
    images[:, :, OBJECT[0], OBJECT[1]] = 1.0
    return images


def object_map(batch: int = 2, inverted: bool = False) -> torch.Tensor:
    maps = torch.zeros(batch, SIZE, SIZE)
    maps[:, OBJECT[0], OBJECT[1]] = 1.0
    return 1 - maps if inverted else maps


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def trapezoid_auc(curve: list[float]) -> float:
    return float(np.trapezoid(curve, dx=1 / (len(curve) - 1)))


def zeros_like(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def test_curves_match_the_hand_computed_ones_for_a_perfect_map():
    steps = 16  # 16 px per step: the object (64 px) is gone after 4 steps
    result = deletion_insertion(ObjectFractionModel(), object_images(), object_map(), [0, 0],
                                steps=steps, blur=zeros_like)
    deleted = [sigmoid(SHARPNESS * max(0.0, 1 - 16 * k / AREA)) for k in range(steps + 1)]
    inserted = [sigmoid(SHARPNESS * min(1.0, 16 * k / AREA)) for k in range(steps + 1)]
    torch.testing.assert_close(result["deletion_curve"], torch.tensor([deleted] * 2))
    torch.testing.assert_close(result["insertion_curve"], torch.tensor([inserted] * 2))
    torch.testing.assert_close(result["deletion"], torch.full((2,), trapezoid_auc(deleted)))
    torch.testing.assert_close(result["insertion"], torch.full((2,), trapezoid_auc(inserted)))
    torch.testing.assert_close(result["fraction"], torch.arange(steps + 1) / steps)


def test_a_map_ranking_the_background_first_scores_worse_by_the_hand_computed_amount():
    steps = 16
    result = deletion_insertion(ObjectFractionModel(), object_images(1), object_map(1, inverted=True), [0],
                                steps=steps, blur=zeros_like)
    # background (192 px) goes first: the object starts to vanish only after step 12
    deleted = [sigmoid(SHARPNESS * min(1.0, max(0.0, 1 - (16 * k - 192) / AREA))) for k in range(steps + 1)]
    inserted = [sigmoid(SHARPNESS * min(1.0, max(0.0, (16 * k - 192) / AREA))) for k in range(steps + 1)]
    torch.testing.assert_close(result["deletion_curve"][0], torch.tensor(deleted))
    torch.testing.assert_close(result["insertion_curve"][0], torch.tensor(inserted))
    perfect = deletion_insertion(ObjectFractionModel(), object_images(1), object_map(1), [0],
                                 steps=steps, blur=zeros_like)
    assert perfect["deletion"] < result["deletion"] and perfect["insertion"] > result["insertion"]


def test_a_partial_game_is_the_prefix_of_a_full_game_and_resolves_the_object():
    # 256 px; the first quarter (64 px) in 8 steps = the first 9 points of the full game in 32 steps
    full = deletion_insertion(ObjectFractionModel(), object_images(), object_map(), [0, 0], steps=32, blur=zeros_like)
    part = deletion_insertion(ObjectFractionModel(), object_images(), object_map(), [0, 0], steps=8, blur=zeros_like,
                              fraction=0.25)
    torch.testing.assert_close(part["deletion_curve"], full["deletion_curve"][:, :9])
    torch.testing.assert_close(part["insertion_curve"], full["insertion_curve"][:, :9])
    torch.testing.assert_close(part["fraction"], torch.arange(9) * 8 / 256)
    # 8 px per step = 1/8 of the 64-px object: the curve falls step by step to the floor
    deleted = [sigmoid(SHARPNESS * max(0.0, 1 - 8 * k / AREA)) for k in range(9)]
    torch.testing.assert_close(part["deletion"], torch.full((2,), trapezoid_auc(deleted)))
    with pytest.raises(ValueError, match="fraction must be a number in"):
        deletion_insertion(ObjectFractionModel(), object_images(), object_map(), [0, 0], fraction=0)


def test_blur_kernel_is_rises_gkern_exactly():
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    reference = scipy.ndimage.gaussian_filter(delta, 5).astype("float32")  # RISE's gkern(11, 5)
    np.testing.assert_allclose(rise_blur_kernel(11, 5.0).numpy(), reference, rtol=0, atol=2e-9)
    delta = np.zeros((7, 7))
    delta[3, 3] = 1
    np.testing.assert_allclose(rise_blur_kernel(7, 1.5).numpy(),
                               scipy.ndimage.gaussian_filter(delta, 1.5).astype("float32"), atol=2e-9)


def test_blur_is_a_zero_padded_per_channel_convolution():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 20, 20)
    kernel = rise_blur_kernel()
    weight = torch.zeros(3, 3, 11, 11)  # RISE's kern: the 2-D kernel on the channel diagonal
    for channel in range(3):
        weight[channel, channel] = kernel
    torch.testing.assert_close(rise_blur(images), F.conv2d(images, weight, padding=5))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(F.relu(self.conv(x)).mean((2, 3))))


def reference_curves(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: list[int],
                     steps: int, mode: str) -> np.ndarray:
    """Image by image, step by step, as RISE's CausalMetric.single_run (step = H*W/steps pixels)."""
    model.eval()
    height, width = maps.shape[1:]
    pixels = height * width
    step = pixels // steps
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    kernel = torch.from_numpy(scipy.ndimage.gaussian_filter(delta, 5).astype("float32"))
    weight = torch.zeros(3, 3, 11, 11)
    for channel in range(3):
        weight[channel, channel] = kernel
    curves = np.empty((images.shape[0], steps + 1))
    for index in range(images.shape[0]):
        image = images[index:index + 1]
        if mode == "deletion":
            start, finish = image.clone(), torch.zeros_like(image)
        else:
            start, finish = F.conv2d(image, weight, padding=5), image.clone()
        order = np.flip(np.argsort(maps[index].numpy().reshape(-1), kind="stable"))
        for k in range(steps + 1):
            with torch.no_grad():
                curves[index, k] = float(model(start).softmax(1)[0, targets[index]])
            if k < steps:
                coords = torch.from_numpy(order[step * k: step * (k + 1)].copy())
                start.view(3, pixels)[:, coords] = finish.view(3, pixels)[:, coords]
    return curves


def test_batched_curves_equal_an_independent_per_image_loop():
    torch.manual_seed(1)
    model, images, maps = TinyNet(), torch.randn(3, 3, 16, 16), torch.rand(3, 16, 16)
    targets = [0, 3, 1]
    result = deletion_insertion(model, images, maps, targets, steps=32, chunk_size=13)
    for mode in ("deletion", "insertion"):
        expected = reference_curves(model, images, maps, targets, 32, mode)
        np.testing.assert_allclose(result[f"{mode}_curve"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_chunk_size_and_mode_subsets_do_not_change_results():
    torch.manual_seed(2)
    model, images, maps = TinyNet(), torch.randn(3, 3, 12, 12), torch.rand(3, 12, 12)
    results = [deletion_insertion(model, images, maps, [1, 2, 3], steps=9, chunk_size=size) for size in (1, 7, 500)]
    for other in results[1:]:
        for key in ("deletion_curve", "insertion_curve"):
            torch.testing.assert_close(other[key], results[0][key])
    only = deletion_insertion(model, images, maps, [1, 2, 3], steps=9, modes=("insertion",))
    assert "deletion" not in only
    torch.testing.assert_close(only["insertion_curve"], results[0]["insertion_curve"])


def test_ties_put_the_later_pixel_first_as_rises_flipped_stable_argsort():
    constant = torch.full((2, 4, 5), 0.3)
    assert torch.equal(saliency_rank(constant), torch.arange(19, -1, -1).expand(2, 20))
    maps = torch.tensor([[[0.5, 1.0, 0.5], [1.0, 0.0, 0.5]]])  # order: pixels 3, 1, 5, 2, 0, 4
    assert saliency_rank(maps).tolist() == [[4, 1, 3, 0, 5, 2]]
    plateaus = torch.randint(0, 4, (3, 6, 7), generator=torch.Generator().manual_seed(5)).float() / 3
    for index in range(3):
        order = np.flip(np.argsort(plateaus[index].numpy().reshape(-1), kind="stable"))
        expected = np.empty(42, dtype=np.int64)
        expected[order] = np.arange(42)
        assert saliency_rank(plateaus)[index].tolist() == expected.tolist()


def test_model_mode_is_restored_and_no_gradients_are_recorded():
    torch.manual_seed(3)
    model, images, maps = TinyNet(), torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    expected = deletion_insertion(model.eval(), images, maps, [0, 1], steps=4)
    model.train()
    model.drop.eval()  # a mixed state must come back exactly
    got = deletion_insertion(model, images, maps, [0, 1], steps=4)
    assert model.training and model.conv.training and not model.drop.training
    torch.testing.assert_close(got["deletion_curve"], expected["deletion_curve"])  # dropout was off
    assert all(p.grad is None for p in model.parameters())
    assert not got["deletion"].requires_grad


def test_bad_inputs_fail_with_clear_errors():
    model, images, maps = TinyNet(), torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    bad = maps.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        deletion_insertion(model, images, bad, [0, 1])
    with pytest.raises(ValueError, match="disagree"):
        deletion_insertion(model, images, maps[:, :4], [0, 1])
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(model, images, maps, [0, 1], steps=65)
    with pytest.raises(ValueError, match="targets"):
        deletion_insertion(model, images, maps, [0, 9], steps=4, chunk_size=1)  # 9 is in a later chunk
    with pytest.raises(ValueError, match="modes"):
        deletion_insertion(model, images, maps, [0, 1], modes=("del",))
    with pytest.raises(ValueError, match="squeeze"):
        deletion_insertion(model, images, maps[:, None], [0, 1])


def test_average_drop_and_increase_match_their_closed_forms():
    model, images = ObjectFractionModel(), object_images(3)
    maps = torch.stack([object_map(1)[0], torch.full((SIZE, SIZE), 0.5), torch.full((SIZE, SIZE), 0.25)])
    result = average_drop_increase(model, images, maps, [0, 0, 0])
    full = sigmoid(SHARPNESS)
    drops = [0.0, (full - sigmoid(SHARPNESS / 2)) / full, (full - sigmoid(SHARPNESS / 4)) / full]
    torch.testing.assert_close(result["drop"], torch.tensor(drops))
    torch.testing.assert_close(result["average_drop"], torch.tensor(100 * sum(drops) / 3))
    assert not result["increase"].any() and float(result["increase_in_confidence"]) == 0
    # for class 1 (score 1 - sigmoid(L*s)) hiding the object raises the score: no drop, an increase
    other = average_drop_increase(model, images, maps, [1, 1, 1])
    assert other["increase"].tolist() == [False, True, True]
    torch.testing.assert_close(other["average_drop"], torch.tensor(0.0))
    torch.testing.assert_close(other["increase_in_confidence"], torch.tensor(200 / 3))


def test_average_drop_needs_maps_in_unit_range():
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        average_drop_increase(ObjectFractionModel(), object_images(1), object_map(1) * 2, [0])


def test_substrate_forms_agree():
    torch.manual_seed(4)
    model, images, maps = TinyNet(), torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    constant = deletion_insertion(model, images, maps, [0, 1], steps=4, substrate=0.25, modes=("deletion",))
    for other in (torch.full((3, 1, 1), 0.25), torch.full((2, 3, 8, 8), 0.25), lambda x: torch.full_like(x, 0.25)):
        result = deletion_insertion(model, images, maps, [0, 1], steps=4, substrate=other, modes=("deletion",))
        torch.testing.assert_close(result["deletion_curve"], constant["deletion_curve"])
    with pytest.raises(ValueError, match="broadcast"):
        deletion_insertion(model, images, maps, [0, 1], steps=4, substrate=torch.zeros(5))
