"""Localization metrics: perfect maps, hand-built cases, and cross-checks against Quantus, a
brute-force distance transform, and the wsolevaluation algorithm run with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import quantus
import scipy.ndimage
import torch

from camzoo.metrics import (
    boxes_to_masks,
    energy_pointing_game,
    max_box_acc,
    max_box_acc_from_hits,
    pointing_game,
    pxap,
    pxap_from_histograms,
    relevance_rank_accuracy,
)


def blob_maps(batch: int, size: int, seed: int, blobs: int = 3,
              boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth maps: sums of Gaussian blobs, min-max normalised (hole-free superlevel sets). With
    ``boxes``, each map also has a blob on its box, so that some maps localise and some do not."""
    rng = np.random.default_rng(seed)
    grid_y, grid_x = np.mgrid[0:size, 0:size]
    maps = np.zeros((batch, size, size))
    for index in range(batch):
        if boxes is not None:
            x0, y0, x1, y1 = boxes[index, 0].tolist()
            spread_y, spread_x = (y1 - y0) / 3, (x1 - x0) / 3
            maps[index] += rng.uniform(0.3, 1) * np.exp(
                -((grid_y - (y0 + y1) / 2) ** 2 / (2 * spread_y**2) + (grid_x - (x0 + x1) / 2) ** 2 / (2 * spread_x**2)))
        for _ in range(rng.integers(1, blobs + 1)):
            cy, cx = rng.uniform(0, size, 2)
            sigma = rng.uniform(size / 16, size / 5)
            maps[index] += rng.uniform(0.3, 1) * np.exp(-((grid_y - cy) ** 2 + (grid_x - cx) ** 2) / (2 * sigma**2))
        maps[index] = (maps[index] - maps[index].min()) / (maps[index].max() - maps[index].min())
    return torch.from_numpy(maps).float()


def random_boxes(batch: int, size: int, seed: int) -> torch.Tensor:
    """One box per image, pixel-edge coordinates with integer corners."""
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(0, size // 2, (2, batch))
    x1 = x0 + rng.integers(4, size // 2, batch)
    y1 = y0 + rng.integers(4, size // 2, batch)
    return torch.tensor(np.stack([x0, y0, x1, y1], 1)[:, None], dtype=torch.float32)


def quantus_scores(metric: type, maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    batch = maps.shape[0]
    x = np.zeros((batch, 3) + tuple(maps.shape[1:]), dtype=np.float32)
    return np.asarray(metric(disable_warnings=True)(
        model=None, x_batch=x, y_batch=np.zeros(batch, dtype=int), a_batch=maps[:, None].numpy(),
        s_batch=masks[:, None].float().numpy(), channel_first=True), dtype=float)


# ---------------------------------------------------------------- pointing game


def test_pointing_game_perfect_and_far_maps():
    masks = boxes_to_masks(torch.tensor([[[4.0, 4.0, 10.0, 10.0]]] * 2), 32, 32)
    perfect = masks.float() * 0.5
    perfect[:, 6, 6] = 1.0
    assert float(pointing_game(perfect, masks)["pointing_game"]) == 1.0
    far = torch.zeros(2, 32, 32)
    far[:, 30, 30] = 1.0
    result = pointing_game(far, masks, tolerance=15)
    assert float(result["pointing_game"]) == 0.0
    assert result["points"].tolist() == [[30, 30], [30, 30]]


def test_pointing_game_tolerance_matches_a_brute_force_distance_transform():
    maps = blob_maps(12, 32, seed=0)
    masks = boxes_to_masks(random_boxes(12, 32, seed=1), 32, 32)
    for tolerance in (0.0, 3.0, 15 * 32 / 224, 8.0):
        got = pointing_game(maps, masks, tolerance=tolerance)["hits"].numpy()
        expected = []
        for index in range(12):
            distance = scipy.ndimage.distance_transform_edt(~masks[index].numpy())  # to the nearest object pixel
            row, col = np.unravel_index(np.argmax(maps[index].numpy()), (32, 32))
            expected.append(distance[row, col] == 0 or distance[row, col] < tolerance)
        assert got.tolist() == expected, tolerance


def test_pointing_game_without_tolerance_agrees_with_quantus():
    torch.manual_seed(0)
    masks = boxes_to_masks(random_boxes(16, 20, seed=2), 20, 20)
    maps = torch.rand(16, 20, 20) + 0.5 * masks[:, :, :].float() * (torch.arange(16) % 2)[:, None, None]
    maps = maps / maps.amax((1, 2), keepdim=True)
    ours = pointing_game(maps, masks, tolerance=0)["hits"].numpy()
    np.testing.assert_array_equal(ours, quantus_scores(quantus.PointingGame, maps, masks).astype(bool))
    assert 0 < ours.sum() < 16  # both outcomes occur, so the comparison means something


def test_pointing_game_tolerance_scales_from_the_original_size():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    maps = torch.zeros(2, 32, 32)
    maps[0, 15, 22] = 1.0  # 3 px right of the object (distance to column 19)
    maps[1, 15, 21] = 1.0  # 2 px
    scaled = pointing_game(maps, masks, tolerance=15, original_size=224)["hits"]  # 15 * 32/224 = 2.14 px
    assert scaled.tolist() == [False, True]
    assert pointing_game(maps, masks, tolerance=15)["hits"].tolist() == [True, True]


def test_constant_maps_have_no_maximum_and_miss():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :8, :8] = True  # covers the first pixel, where argmax of a constant map lands
    maps = torch.stack([torch.zeros(16, 16), torch.full((16, 16), 0.7)])
    assert pointing_game(maps, masks)["hits"].tolist() == [False, False]


def test_boxes_and_equal_masks_give_the_same_results():
    maps = blob_maps(6, 24, seed=3)
    boxes = random_boxes(6, 24, seed=4)
    masks = boxes_to_masks(boxes, 24, 24)
    assert torch.equal(pointing_game(maps, boxes=boxes)["hits"], pointing_game(maps, masks)["hits"])
    torch.testing.assert_close(energy_pointing_game(maps, boxes=boxes)["per_image"],
                               energy_pointing_game(maps, masks)["per_image"])


def test_boxes_to_masks_covers_pixels_whose_centres_are_inside():
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [float("nan")] * 4]])
    mask = boxes_to_masks(boxes, 6, 6)[0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[2:4, 1:3] = True
    assert torch.equal(mask, expected)


# ---------------------------------------------------------------- energy / rank


def test_energy_pointing_game_agrees_with_quantus_relevance_mass():
    torch.manual_seed(1)
    maps = torch.rand(8, 20, 20) ** 3
    masks = boxes_to_masks(random_boxes(8, 20, seed=5), 20, 20)
    np.testing.assert_allclose(energy_pointing_game(maps, masks)["per_image"].numpy(),
                               quantus_scores(quantus.RelevanceMassAccuracy, maps, masks), rtol=1e-5)


def test_energy_pointing_game_perfect_and_empty_maps():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    maps = torch.stack([masks[0].float(), torch.zeros(10, 10)])
    assert energy_pointing_game(maps, masks)["per_image"].tolist() == [1.0, 0.0]


def test_relevance_rank_accuracy_agrees_with_quantus():
    torch.manual_seed(2)
    maps = torch.rand(8, 20, 20)
    masks = boxes_to_masks(random_boxes(8, 20, seed=6), 20, 20)
    np.testing.assert_allclose(relevance_rank_accuracy(maps, masks)["per_image"].numpy(),
                               quantus_scores(quantus.RelevanceRankAccuracy, maps, masks), rtol=1e-6)


def test_empty_ground_truth_and_bad_maps_are_refused():
    maps = torch.rand(2, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1, 1] = True
    with pytest.raises(ValueError, match="empty"):
        pointing_game(maps, masks)
    with pytest.raises(ValueError, match="ground truth"):
        energy_pointing_game(maps)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        pointing_game(maps * 3, masks)
    with pytest.raises(ValueError, match="outside"):
        pointing_game(maps, boxes=torch.tensor([[[0.0, 0.0, 9.0, 4.0]]] * 2))
    with pytest.raises(ValueError, match="partly NaN"):
        pointing_game(maps, boxes=torch.tensor([[[0.0, float("nan"), 4.0, 4.0]]] * 2))


# ---------------------------------------------------------------- MaxBoxAcc


def wsol_reference(maps: np.ndarray, boxes: np.ndarray, iou_thresholds=(0.3, 0.5, 0.7)):
    """The wsolevaluation algorithm (BoxEvaluator) rerun with OpenCV, image by image.

    ``boxes`` (B,4) are inclusive integer pixel boxes. Returns MaxBoxAccV1 and the V2 per IoU.
    """
    thresholds = np.arange(0, 1, 0.01)
    height, width = maps.shape[1:]

    def iou(box, gt):
        inter_w = max(0, min(box[2], gt[2]) - max(box[0], gt[0]) + 1)
        inter_h = max(0, min(box[3], gt[3]) - max(box[1], gt[1]) + 1)
        inter = inter_w * inter_h
        area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731
        union = area(box) + area(gt) - inter
        return inter / union if union > 0 else 0.0

    correct_v1 = np.zeros(len(thresholds))
    correct_v2 = {t: np.zeros(len(thresholds)) for t in iou_thresholds}
    for scoremap, gt in zip(maps, boxes):
        image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
        for k, threshold in enumerate(thresholds):
            _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if len(contours) == 0:
                candidates, largest = [[0, 0, 0, 0]], [0, 0, 0, 0]
            else:
                def to_box(contour):
                    x, y, w, h = cv2.boundingRect(contour)
                    return [x, y, min(x + w, width - 1), min(y + h, height - 1)]
                candidates = [to_box(c) for c in contours]
                largest = to_box(max(contours, key=cv2.contourArea))
            correct_v1[k] += iou(largest, gt) >= 0.5
            best = max(iou(box, gt) for box in candidates)
            for t in iou_thresholds:
                correct_v2[t][k] += best >= t
    count = len(maps)
    return (correct_v1 / count).max(), [(correct_v2[t] / count).max() for t in iou_thresholds]


def test_max_box_acc_agrees_with_the_wsolevaluation_algorithm_run_with_opencv():
    boxes = random_boxes(12, 40, seed=8)
    maps = blob_maps(12, 40, seed=7, blobs=2, boxes=boxes)
    inclusive = boxes[:, 0].numpy().astype(int) - np.array([0, 0, 1, 1])
    result = max_box_acc(maps, boxes=boxes, chunk_size=3)
    v1, v2 = wsol_reference(maps.numpy(), inclusive)
    assert float(result["max_box_acc_v1"]) == pytest.approx(v1)
    np.testing.assert_allclose(result["max_box_acc_v2_per_iou"].numpy(), v2)
    assert 0 < v1 < 1  # a non-trivial case


def test_perfect_maps_score_one():
    boxes = torch.tensor([[[8.0, 12.0, 28.0, 30.0]], [[0.0, 0.0, 20.0, 16.0]]])
    maps = boxes_to_masks(boxes, 40, 40).float()
    for convention in ("wsol", "exact"):
        result = max_box_acc(maps, boxes=boxes, box_convention=convention)
        assert float(result["max_box_acc_v1"]) == 1.0 and float(result["max_box_acc_v2"]) == 1.0
    from_masks = max_box_acc(maps, masks=maps.bool(), box_convention="exact")
    assert bool(from_masks["hits_v1"].all())  # the exact box of a perfect map hits at every threshold


def test_the_best_threshold_is_chosen_over_counts_not_per_image():
    box = torch.tensor([[[8.0, 8.0, 24.0, 24.0]]] * 2)
    inside = boxes_to_masks(box, 32, 32)[0]
    hit_low = torch.where(inside, 0.3, 0.0)  # whole box only at thresholds < 0.3
    hit_low[15:17, 15:17] = 1.0
    hit_high = torch.where(inside, 1.0, 0.3)  # whole image below 0.3, the box above
    result = max_box_acc(torch.stack([hit_low, hit_high]), boxes=box)
    hits = result["hits_v1"]
    assert bool(hits[0, :30].all()) and not bool(hits[0, 30:].any())
    assert not bool(hits[1, :30].any()) and bool(hits[1, 30:].all())
    assert float(result["max_box_acc_v1"]) == 0.5  # a per-image max would claim 1.0


def test_v2_finds_the_object_among_several_regions_where_v1_takes_the_largest():
    box = torch.tensor([[[4.0, 4.0, 12.0, 12.0]]])
    maps = torch.zeros(1, 48, 48)
    maps[0, 4:12, 4:12] = 1.0  # on the object
    maps[0, 20:44, 20:44] = 1.0  # larger, elsewhere
    result = max_box_acc(maps, boxes=box)
    assert float(result["max_box_acc_v1"]) == 0.0
    assert result["max_box_acc_v2_per_iou"].tolist() == [1.0, 1.0, 1.0]


def test_hits_pool_over_batches():
    maps = blob_maps(8, 32, seed=9)
    boxes = random_boxes(8, 32, seed=10)
    whole = max_box_acc(maps, boxes=boxes)
    halves = [max_box_acc(maps[part], boxes=boxes[part]) for part in (slice(0, 3), slice(3, 8))]
    pooled = max_box_acc_from_hits(torch.cat([h["hits_v1"] for h in halves]),
                                   torch.cat([h["hits_v2"] for h in halves], dim=1))
    for key in ("max_box_acc_v1", "max_box_acc_v2"):
        torch.testing.assert_close(pooled[key], whole[key])


def test_empty_and_constant_maps_are_defined():
    box = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 16.0, 16.0]]])
    result = max_box_acc(torch.stack([torch.zeros(16, 16), torch.full((16, 16), 0.5)]), boxes=box)
    # all-zero map: no region at any threshold -> the reference's (0,0,0,0) box, which is the 1-px GT
    assert bool(result["hits_v1"][0].all())
    # constant map: the whole image at every threshold -> the whole-image GT box
    assert bool(result["hits_v1"][1].all())


# ---------------------------------------------------------------- PxAP


def pxap_reference(maps: np.ndarray, masks: np.ndarray) -> float:
    """wsolevaluation's MaskEvaluator: np.histogram over the threshold bins, then PR area."""
    edges = np.append(np.arange(0, 1, 0.01), [1.0, 2.0, 3.0])
    positive = np.histogram(maps[masks], bins=edges)[0].astype(float)
    negative = np.histogram(maps[~masks], bins=edges)[0].astype(float)
    tp, fp = positive[::-1].cumsum(), negative[::-1].cumsum()
    fn = positive.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
    nonzero = (tp + fp) != 0
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum())


def test_pxap_agrees_with_the_wsolevaluation_histograms():
    maps = blob_maps(6, 32, seed=11)
    masks = boxes_to_masks(random_boxes(6, 32, seed=12), 32, 32)
    result = pxap(maps, masks)
    assert float(result["pxap"]) == pytest.approx(pxap_reference(maps.numpy(), masks.numpy()), abs=1e-6)
    per_image = [pxap_reference(maps[i:i + 1].numpy(), masks[i:i + 1].numpy()) for i in range(6)]
    np.testing.assert_allclose(result["per_image"].numpy(), per_image, atol=1e-6)
    pooled = pxap_from_histograms(result["hist_positive"].sum(0), result["hist_negative"].sum(0))
    torch.testing.assert_close(pooled, result["pxap"])


def test_pxap_of_a_random_map_is_the_object_fraction_and_of_a_perfect_map_one():
    torch.manual_seed(3)
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[:, 10:42, 20:52] = True  # a quarter of the image
    fraction = float(masks.float().mean())
    assert float(pxap(torch.rand(4, 64, 64), masks)["pxap"]) == pytest.approx(fraction, abs=0.02)
    assert float(pxap(masks.float(), masks)["pxap"]) == 1.0


def test_pxap_refuses_box_only_ground_truth():
    with pytest.raises(ValueError, match="needs pixel masks.*only boxes"):
        pxap(torch.rand(1, 8, 8), boxes=torch.tensor([[[0.0, 0.0, 4.0, 4.0]]]))
