"""Exact protocol presets, each checked against an independent re-implementation of the reference
code's logic written here: wsolevaluation's MaxBoxAccV1/V2 (rerun with OpenCV), RISE's CausalMetric,
TorchRay's PointingGame, and the two energy-pointing-game variants."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import quantus
import scipy.ndimage
import torch
from torch import nn

from camzoo.metrics.causal import PROTOCOLS, RISE_PROTOCOL, RISE_STEPS, CausalProtocol, deletion_insertion
from camzoo.metrics.localization import energy_pointing_game, pointing_game, pointing_game_class_mean
from camzoo.metrics.wsol import max_box_acc

BACKENDS = ("scipy", "opencv")


# ---------------------------------------------------------------- wsol: MaxBoxAccV1 / V2


def wsol_ious(scoremap: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """clovaai/wsolevaluation for one map, rerun with OpenCV: the best IoU at each CAM threshold for
    ``multi_contour_eval=False`` (V1: the contour of largest cv2.contourArea, Python's max keeps the
    first) and ``True`` (V2: every contour of RETR_TREE). ``gt_boxes`` (K,4) inclusive x0,y0,x1,y1."""
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)

    def iou(boxes: np.ndarray) -> np.ndarray:  # calculate_multiple_iou: +1 side lengths, max over GT
        a, b = boxes[:, None, :], gt_boxes[None, :, :]
        inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
                 * np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1))
        area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
        area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
        union = area_a + area_b - inter
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0).max(1)

    v1, v2 = [], []
    for threshold in np.arange(0, 1, 0.01):
        _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if len(contours) == 0:
            v1.append(iou(np.array([[0, 0, 0, 0]]))[0])
            v2.append(v1[-1])
            continue

        def box(contour: np.ndarray) -> list[int]:
            x, y, w, h = cv2.boundingRect(contour)
            return [x, y, min(x + w, width - 1), min(y + h, height - 1)]

        v1.append(iou(np.array([box(max(contours, key=cv2.contourArea))]))[0])
        v2.append(iou(np.array([box(c) for c in contours])).max())
    return np.array(v1), np.array(v2)


def inclusive(boxes: torch.Tensor) -> np.ndarray:
    """Pixel-edge boxes with integer corners -> the inclusive pixel boxes wsolevaluation compares."""
    return boxes.numpy().astype(int) - np.array([0, 0, 1, 1])


def assert_matches_wsolevaluation(maps: torch.Tensor, boxes: torch.Tensor, backend: str) -> dict:
    result = max_box_acc(maps, boxes=boxes, backend=backend, chunk_size=3)
    reference = [wsol_ious(maps[i].numpy(), inclusive(boxes[i])) for i in range(len(maps))]
    ref_v1 = np.stack([r[0] for r in reference])
    ref_v2 = np.stack([r[1] for r in reference])
    np.testing.assert_array_equal(result["iou_v1"].numpy(), ref_v1)
    np.testing.assert_array_equal(result["iou_v2"].numpy(), ref_v2)
    assert float(result["max_box_acc_v1"]) == pytest.approx((ref_v1 >= 0.5).mean(0).max(), abs=1e-7)
    per_iou = [(ref_v2 >= t).mean(0).max() for t in (0.3, 0.5, 0.7)]
    np.testing.assert_allclose(result["max_box_acc_v2_per_iou"].numpy(), per_iou, atol=1e-7)
    assert float(result["max_box_acc_v2"]) == pytest.approx(np.mean(per_iou), abs=1e-7)
    return result


def random_boxes(count: int, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    x0, y0 = rng.integers(0, width - 2, count), rng.integers(0, height - 2, count)
    x1 = np.minimum(width, x0 + rng.integers(2, width, count))
    y1 = np.minimum(height, y0 + rng.integers(2, height, count))
    return torch.tensor(np.stack([x0, y0, x1, y1], 1)[:, None], dtype=torch.float32)


def stress_maps(rng: np.random.Generator, height: int = 17, width: int = 23) -> torch.Tensor:
    """Maps that make contours hard: noise, plateaus, rings, 1-px lines, lone pixels, the border."""
    noise = rng.random((3, height, width))
    plateaus = rng.integers(0, 5, (3, height, width)) / 4  # many equal values and ties
    blocky = np.repeat(np.repeat(rng.integers(0, 3, (2, height // 2 + 1, width // 2 + 1)) / 2, 2, 1), 2, 2)
    blocky = blocky[:, :height, :width]
    rows, cols = np.mgrid[0:height, 0:width]
    ring_distance = np.maximum(abs(rows - height // 2), abs(cols - width // 2))
    rings = np.stack([(ring_distance % 3 == 0) * 1.0, (ring_distance % 4 < 2) * (1 - ring_distance / 20)])
    lines = np.zeros((2, height, width))
    lines[0, 3, 2:20] = 1.0  # a long 1-px line (contour area 0) ...
    lines[0, 10:12, 5:7] = 1.0  # ... and a 2x2 block (area 1): V1 takes the block
    lines[0, 5:15, 21] = 0.6
    lines[1, :, 7] = 1.0  # a line cutting the image, touching two borders
    lines[1, 8, :] = 0.8
    pixels = np.zeros((2, height, width))
    pixels[0].flat[rng.choice(height * width, 9, replace=False)] = 1.0  # lone pixels, all tied
    pixels[1].flat[rng.choice(height * width, 30, replace=False)] = rng.integers(1, 4, 30) / 3
    border = np.zeros((2, height, width))
    border[0, [0, -1], :] = 1.0
    border[0, :, [0, -1]] = 1.0  # a frame: its hole is the whole interior
    border[0, 4:9, 5:12] = 0.5
    border[1] = (rows + cols) % 2  # a checkerboard: diagonal connectivity everywhere
    flat = np.stack([np.zeros((height, width)), np.full((height, width), 0.4)])  # all zero, constant
    maps = np.concatenate([noise, plateaus, blocky, rings, lines, pixels, border, flat])
    return torch.from_numpy(maps).float()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_box_acc_equals_wsolevaluation_on_hard_maps(backend):
    rng = np.random.default_rng(0)
    maps = stress_maps(rng)
    assert_matches_wsolevaluation(maps, random_boxes(len(maps), 17, 23, rng), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_box_acc_equals_wsolevaluation_with_boxes_on_the_maps_own_regions(backend):
    """Random boxes rarely reach IoU 0.7; boxes drawn around the maps' own regions make hits common."""
    rng = np.random.default_rng(1)
    maps = stress_maps(rng)
    boxes = []
    for scoremap in maps.numpy():
        labels, count = scipy.ndimage.label(scoremap >= np.quantile(scoremap, 0.7), np.ones((3, 3)))
        spans = scipy.ndimage.find_objects(labels)
        if count == 0:
            boxes.append([0, 0, 4, 4])
            continue
        rows, cols = spans[rng.integers(count)]
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
    result = assert_matches_wsolevaluation(maps, torch.tensor(boxes, dtype=torch.float32)[:, None], backend)
    assert float(result["max_box_acc_v2"]) > 0.3  # hits happen, so the comparison means something


def test_v2_counts_hole_borders_so_a_ring_around_the_object_hits():
    maps = torch.zeros(1, 20, 20)
    maps[0, 4:16, 4:16] = 1.0
    maps[0, 7:13, 7:13] = 0.0  # a ring; its hole border runs through pixels 6..13
    box = torch.tensor([[[6.0, 6.0, 15.0, 15.0]]])  # inclusive 6..14 = the hole border's wsol box
    for backend in BACKENDS:
        result = assert_matches_wsolevaluation(maps, box, backend)
        assert result["max_box_acc_v2_per_iou"].tolist() == [1.0, 1.0, 1.0]  # regions only: IoU 0.48
        assert float(result["max_box_acc_v1"]) == 0.0  # V1 takes the outer border (largest area)


def test_v1_uses_contour_area_and_opencvs_order_on_ties():
    maps = torch.zeros(2, 12, 12)
    maps[0, 2, 1:11] = 1.0  # a 10-pixel line: contour area 0
    maps[0, 7:9, 3:5] = 1.0  # 4 pixels, contour area 1: V1's choice although the line has more pixels
    maps[1, 1, 1] = 1.0  # two lone pixels, both area 0: OpenCV lists the later one first
    maps[1, 9, 8] = 1.0
    block = torch.tensor([[[3.0, 7.0, 6.0, 10.0]]])  # wsol box of the block: inclusive 3..5 x 7..9
    late = torch.tensor([[[8.0, 9.0, 10.0, 11.0]]])  # wsol box of pixel (9, 8): inclusive 8..9 x 9..10
    early = torch.tensor([[[1.0, 1.0, 3.0, 3.0]]])
    for backend in BACKENDS:
        assert bool(assert_matches_wsolevaluation(maps[:1], block, backend)["hits_v1"][0, 50])
        assert bool(assert_matches_wsolevaluation(maps[1:], late, backend)["hits_v1"][0, 50])
        assert not bool(assert_matches_wsolevaluation(maps[1:], early, backend)["hits_v1"][0, 50])


def test_exact_box_convention_uses_the_contours_own_extremes():
    maps = torch.zeros(1, 20, 20)
    maps[0, 4:16, 4:16] = 1.0
    maps[0, 7:13, 7:13] = 0.0
    outer = max_box_acc(maps, boxes=torch.tensor([[[4.0, 4.0, 16.0, 16.0]]]), box_convention="exact")
    assert bool(outer["hits_v1"].all()) and float(outer["iou_v1"].min()) == 1.0
    hole = max_box_acc(maps, boxes=torch.tensor([[[6.0, 6.0, 14.0, 14.0]]]), box_convention="exact")
    assert float(hole["iou_v2"].min()) == 1.0


def test_bad_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        max_box_acc(torch.rand(1, 8, 8), boxes=torch.tensor([[[0.0, 0.0, 4.0, 4.0]]]), backend="cv")


# ---------------------------------------------------------------- rise: deletion / insertion


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Dropout(0.5))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = SmallConvNet()
    with torch.no_grad():
        model.fc.weight.mul_(8)  # spread the probabilities so that the curves move
        model.features[1].running_mean.uniform_(-0.2, 0.2)
    return model.eval()


def gkern(klen: int, nsig: float) -> torch.Tensor:
    """RISE's utils: scipy's gaussian_filter of a dirac, on the channel diagonal of a (3,3,k,k) kernel."""
    dirac = np.zeros((klen, klen))
    dirac[klen // 2, klen // 2] = 1
    kern = np.zeros((3, 3, klen, klen))
    for channel in range(3):
        kern[channel, channel] = scipy.ndimage.gaussian_filter(dirac, nsig)
    return torch.from_numpy(kern.astype("float32"))


def rise_auc(arr: np.ndarray) -> float:
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


def rise_reference(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, mode: str,
                   bounds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """RISE's CausalMetric.evaluate: top-1 class of the softmax model, pixels in the order
    np.flip(np.argsort(stable)), step i changes pixels bounds[i]:bounds[i+1] of every image in place
    (RISE: bounds[i] = step * i), zeros substrate for deletion, gkern(11, 5) blur for insertion."""
    n, _, height, width = images.shape
    hw = height * width
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        top = np.argmax(softmax_model(images).numpy(), -1)
        if mode == "del":
            start, finish = images.clone(), torch.zeros_like(images)
        else:
            kern = gkern(11, 5)
            start, finish = nn.functional.conv2d(images, kern, padding=11 // 2), images.clone()
        order = np.flip(np.argsort(maps.numpy().reshape(-1, hw), axis=1, kind="stable"), axis=-1)
        rows = np.arange(n).reshape(n, 1)
        scores = np.empty((len(bounds), n))
        for i in range(len(bounds)):
            scores[i] = softmax_model(start).numpy()[range(n), top]
            if i + 1 < len(bounds):
                coords = order[:, bounds[i]:bounds[i + 1]]
                start.numpy().reshape(n, 3, hw)[rows, :, coords] = finish.numpy().reshape(n, 3, hw)[rows, :, coords]
    return scores.T, top


def causal_test_maps(size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    continuous = torch.rand(2, size, size, generator=generator)
    plateaus = torch.randint(0, 4, (2, size, size), generator=generator).float() / 3
    blocky = plateaus[:1, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :size, :size]
    constant = torch.full((1, size, size), 0.5)
    return torch.cat([continuous, plateaus, blocky, constant])


def causal_test_images(count: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    tint = 2 * torch.randn(count, 3, 1, 1, generator=generator)  # so that predictions differ
    return torch.randn(count, 3, size, size, generator=generator) + tint


def test_rise_protocol_equals_rises_causal_metric_at_28_px_per_step():
    """28 x 28 = 784 px: RISE's own arithmetic (step = 28 px, ceil(784 / 28) = 28 steps) applies as is."""
    model = small_model()
    maps = causal_test_maps(28)
    images = causal_test_images(len(maps), 28)
    result = deletion_insertion(model, images, maps, targets=[4] * len(maps), protocol="rise", chunk_size=23)
    assert result["deletion_curve"].shape == (len(maps), 29)
    step = 28 * 28 // RISE_STEPS
    for mode, name in (("del", "deletion"), ("ins", "insertion")):
        expected, top = rise_reference(model, images, maps, mode, [step * i for i in range(RISE_STEPS + 1)])
        np.testing.assert_allclose(result[f"{name}_curve"].numpy(), expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result[name].numpy(), [rise_auc(curve) for curve in expected], rtol=0, atol=1e-6)
        assert result["targets"].tolist() == top.tolist()  # the prediction, not the targets passed
    assert len(set(result["targets"].tolist())) > 1


def test_rise_protocol_at_a_size_where_pixels_per_step_is_not_an_integer():
    """16 x 16 = 256 px in 28 steps: point k has floor(k * 256 / 28) pixels changed."""
    model = small_model()
    maps = causal_test_maps(16)
    images = causal_test_images(len(maps), 16)
    result = deletion_insertion(model, images, maps, protocol="rise")
    bounds = [k * 256 // 28 for k in range(29)]
    assert bounds[:4] == [0, 9, 18, 27] and bounds[-1] == 256
    np.testing.assert_allclose(result["fraction"].numpy(), np.array(bounds) / 256, rtol=0, atol=1e-7)
    for mode, name in (("del", "deletion"), ("ins", "insertion")):
        expected, _ = rise_reference(model, images, maps, mode, bounds)
        np.testing.assert_allclose(result[f"{name}_curve"].numpy(), expected, rtol=0, atol=1e-6)


def test_protocols_are_named_and_the_default_scores_the_given_targets():
    assert RISE_STEPS == 28 and RISE_PROTOCOL.steps == 28
    assert 224 * 224 / RISE_PROTOCOL.steps == 224 * 8  # RISE's 1,792 px per step at 224 x 224
    assert set(PROTOCOLS) >= {"rise", "default"} and PROTOCOLS["rise"] is RISE_PROTOCOL
    assert "Evaluation.ipynb" in RISE_PROTOCOL.reference
    model = small_model()
    maps = causal_test_maps(16)[:3]
    images = causal_test_images(3, 16)
    given = deletion_insertion(model, images, maps, [0, 1, 2])  # protocol="default"
    assert given["targets"].tolist() == [0, 1, 2] and given["deletion_curve"].shape == (3, 29)
    predicted = deletion_insertion(model, images, maps, None)
    rise = deletion_insertion(model, images, maps, [0, 1, 2], protocol=RISE_PROTOCOL)
    torch.testing.assert_close(predicted["deletion_curve"], rise["deletion_curve"])
    overridden = deletion_insertion(model, images, maps, [0, 1, 2], protocol="rise", steps=8)
    assert overridden["insertion_curve"].shape == (3, 9)
    with pytest.raises(ValueError, match="unknown causal protocol"):
        deletion_insertion(model, images, maps, [0, 1, 2], protocol="torchray")
    with pytest.raises(ValueError, match="target"):
        CausalProtocol("mine", 10, 0.0, (11, 5.0), target="label")


# ---------------------------------------------------------------- torchray: pointing game


def torchray_pointing_game(maps: torch.Tensor, masks: torch.Tensor, labels: list[int], num_classes: int,
                           tolerance: int) -> tuple[list[bool], float]:
    """TorchRay's benchmark logic: the point is the first argmax of the flattened map (u = column,
    v = row); a hit when the mask meets the disc (dv^2 + du^2) < tolerance^2; hits and misses are
    counted per class; the score is the mean over all classes of hits / max(hits + misses, 1)."""
    hits, misses = np.zeros(num_classes), np.zeros(num_classes)
    outcome = []
    for saliency, mask, label in zip(maps, masks, labels):
        index = int(torch.argmax(saliency.reshape(-1)))
        u, v = index % saliency.shape[1], index // saliency.shape[1]
        rows, cols = np.mgrid[0:saliency.shape[0], 0:saliency.shape[1]]
        hit = bool((mask.numpy() & (((rows - v) ** 2 + (cols - u) ** 2) < tolerance ** 2)).any())
        outcome.append(hit)
        (hits if hit else misses)[label] += 1
    return outcome, float((hits / np.maximum(hits + misses, 1)).mean())


def test_pointing_game_class_mean_equals_torchrays_benchmark_score():
    generator = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 6, (40, 20, 20), generator=generator).float() / 5  # plateaus: tied maxima
    masks = torch.zeros(40, 20, 20, dtype=torch.bool)
    for index in range(40):
        top, left = torch.randint(0, 14, (2,), generator=generator).tolist()
        masks[index, top:top + 6, left:left + 6] = True
    labels = torch.randint(0, 4, (40,), generator=generator)
    labels[labels == 2] = 1  # class 2 never occurs: TorchRay counts it as 0 in its mean over 5 classes
    result = pointing_game(maps, masks, tolerance=3, labels=labels, num_classes=5)
    hits, score = torchray_pointing_game(maps, masks, labels.tolist(), 5, tolerance=3)
    assert result["hits"].tolist() == hits
    assert float(result["pointing_game_class_mean"]) == pytest.approx(score, abs=1e-7)
    assert 0 < sum(hits) < 40
    present = pointing_game(maps, masks, tolerance=3, labels=labels)  # mean over the classes present
    assert present["classes"].tolist() == [0, 1, 3]
    assert float(present["pointing_game_class_mean"]) == pytest.approx(score * 5 / 3, abs=1e-6)
    pooled = pointing_game_class_mean(torch.cat([result["hits"][:15], result["hits"][15:]]), labels)
    torch.testing.assert_close(pooled["pointing_game_class_mean"], present["pointing_game_class_mean"])


def test_pointing_game_ties_take_the_first_maximum_unlike_quantus():
    masks = torch.zeros(1, 10, 10, dtype=torch.bool)
    masks[0, 6:9, 6:9] = True
    maps = torch.zeros(1, 10, 10)
    maps[0, 1, 1] = 1.0  # the first maximum in raster order: off the object
    maps[0, 7, 7] = 1.0  # a tied maximum on the object
    assert pointing_game(maps, masks, tolerance=0)["hits"].tolist() == [False]
    x = np.zeros((1, 3, 10, 10), dtype=np.float32)
    quantus_hit = quantus.PointingGame(disable_warnings=True)(
        model=None, x_batch=x, y_batch=np.zeros(1, dtype=int), a_batch=maps[:, None].numpy(),
        s_batch=masks[:, None].float().numpy(), channel_first=True)
    assert quantus_hit == [True]  # Quantus counts a hit when any tied maximum is on the object


def test_class_mean_needs_matching_labels():
    hits = torch.tensor([True, False])
    with pytest.raises(ValueError, match="labels"):
        pointing_game_class_mean(hits, [0, 1, 2])
    with pytest.raises(ValueError, match="num_classes"):
        pointing_game_class_mean(hits, [0, 4], num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        pointing_game(torch.rand(2, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool), num_classes=3)


# ---------------------------------------------------------------- energy pointing game variants


def test_energy_pointing_game_names_its_variant():
    generator = torch.Generator().manual_seed(4)
    maps = torch.rand(3, 16, 16, generator=generator) ** 2
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, 4:10, 3:8] = True
    masks[:, 6, 3:12] = True  # a mask that is not its own bounding box
    boxes = torch.tensor([[[3.0, 4.0, 12.0, 10.0]]] * 3)  # the mask's bounding box
    from_masks = energy_pointing_game(maps, masks)
    assert from_masks["variant"] == "mask" and "energy_pointing_game_mask" in from_masks
    mass = quantus.RelevanceMassAccuracy(disable_warnings=True)(
        model=None, x_batch=np.zeros((3, 3, 16, 16), dtype=np.float32), y_batch=np.zeros(3, dtype=int),
        a_batch=maps[:, None].numpy(), s_batch=masks[:, None].float().numpy(), channel_first=True)
    np.testing.assert_allclose(from_masks["per_image"].numpy(), mass, rtol=1e-5)

    # Score-CAM: energy inside the bounding box, x indexing columns and y rows.
    score_cam = (maps[:, 4:10, 3:12].sum((1, 2)) / maps.sum((1, 2))).numpy()
    for result in (energy_pointing_game(maps, boxes=boxes), energy_pointing_game(maps, masks, boxes, "box"),
                   energy_pointing_game(maps, masks, variant="box")):
        assert result["variant"] == "box" and "energy_pointing_game_box" in result
        np.testing.assert_allclose(result["per_image"].numpy(), score_cam, rtol=1e-5)
    assert bool((energy_pointing_game(maps, boxes=boxes)["per_image"] > from_masks["per_image"]).all())
    with pytest.raises(ValueError, match="needs masks"):
        energy_pointing_game(maps, boxes=boxes, variant="mask")
    with pytest.raises(ValueError, match="variant"):
        energy_pointing_game(maps, masks, variant="quantus")
