"""The "detector" kind: torchvision's FCOS on a camzoo backbone, trained by camzoo's one trainer on the
boxes of "scenes", scored by AP at IoU 0.5, checkpointed, and explained per detected box."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import camzoo
from camzoo.inference import (average_precision, detection_matches, detection_scores, evaluate, evaluate_detection,
                              match_detections, predict)
from camzoo.models import build_model, get_kind, load_model
from camzoo.targets import BoxTarget
from camzoo.train import TrainConfig, train, train_step
from camzoo.train.loop import _augment_with_boxes
from helpers import cli, runtime_error, scene_splits

SIZE = 32


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return scene_splits(tmp_path_factory.mktemp("cache"), SIZE)


def _config(**overrides) -> TrainConfig:
    base = dict(kind="detector", backbone="resnet8", epochs=2, batch_size=16, lr=0.02, warmup=0.2, seed=0,
                progress=False)
    return TrainConfig(**{**base, **overrides})


def test_the_detector_gives_torchvision_detections_from_the_backbones_map():
    model = build_model("detector", "resnet8", num_classes=7, image_size=SIZE).eval()
    assert model.task == "detection" and get_kind("detector") is type(model) and not hasattr(model, "fc")
    seen = []
    model.cam_hook.register_forward_hook(lambda module, inputs, out: seen.append(out.shape))
    found = model(torch.randn(2, 3, SIZE, SIZE))
    assert seen == [(2, 64, 8, 8)] and model.default_cam_layer == "cam_hook"  # the backbone's final map, stride 4
    assert isinstance(found, list) and len(found) == 2
    for detection in found:
        boxes, labels, scores = detection["boxes"], detection["labels"], detection["scores"]
        assert boxes.shape == (len(labels), 4) and scores.shape == labels.shape and 0 < len(labels) <= 20
        assert ((labels >= 1) & (labels < 7)).all()  # 0 is background: never detected
        assert (scores > 0.05).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert boxes.min() >= 0 and boxes.max() <= SIZE

    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(model.transform(x)[0].tensors, x)  # the identity at the model's size: skipped there
    larger = model(nn.functional.interpolate(x, scale_factor=2.0))  # resized to 32 px, boxes scaled back
    assert all(d["boxes"].max() <= 2 * SIZE for d in larger) and any(d["boxes"].max() > SIZE for d in larger)

    model.train()
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 14.0, 12.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model(torch.randn(2, 3, SIZE, SIZE), targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(value.ndim == 0 and value > 0 for value in losses.values())
    out = model.forward_train(torch.randn(2, 3, SIZE, SIZE))
    assert out.logits.shape == (2, 64, 7) and out.box_regression.shape == (2, 64, 4)

    deeper = build_model("detector", "resnet20", num_classes=4, image_size=48, head_convs=1, head_width=32).eval()
    assert isinstance(deeper.neck, nn.Conv2d) and len(deeper.head.classification_head.conv) == 3
    assert len(deeper(torch.randn(1, 3, 48, 48))) == 1
    with pytest.raises(ValueError, match="head_width must be a positive multiple of 32"):
        build_model("detector", "resnet8", num_classes=3, head_width=48)
    with pytest.raises(ValueError, match="box_score_thresh must be a number in"):
        build_model("detector", "resnet8", num_classes=3, box_score_thresh=2)


def test_a_few_steps_reduce_the_detection_loss(scenes):
    train_set, _ = scenes
    x, _, objects = train_set.get_batch(torch.arange(16), objects=True)
    targets = _augment_with_boxes(x, objects, "none", torch.Generator())[1]
    assert [len(t["labels"]) for t in targets] == (objects["object_labels"] >= 0).sum(1).tolist()
    torch.manual_seed(0)
    model = build_model("detector", "resnet8", len(train_set.classes) + 1, image_size=SIZE).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    losses = [float(train_step(model, optimizer, scaler, x, targets)[0]) for _ in range(10)]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("mode", ["flip", "crop_flip"])
def test_augmentation_moves_the_boxes_with_the_pixels(scenes, mode):
    train_set, _ = scenes
    x, _, objects = train_set.get_batch(torch.arange(16), objects=True)
    x[:, 0] = objects["instances"].float()  # channel 0 carries the instance map: the truth after augmenting
    images, targets = _augment_with_boxes(x, objects, mode, torch.Generator().manual_seed(3))
    moved = 0
    for image, target, labels, boxes in zip(images, targets, objects["object_labels"], objects["object_boxes"]):
        for box, label in zip(target["boxes"], target["labels"]):
            slot = int(torch.nonzero(labels + 1 == label)[0, 0])
            rows, cols = torch.nonzero(image[0].round() == slot + 1, as_tuple=True)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            moved += not torch.equal(box, boxes[slot])
    assert moved > 0  # the draws did move some boxes


class PaintedDetections(nn.Module):
    """A "detector" whose detections are looked up by the image index written in its input."""

    task, num_classes = "detection", 3

    def __init__(self, detections: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.table = detections

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [self.table[int(i)] for i in x[:, 0, 0, 0].round()]


class HandMadeObjects:
    """Images 0..N-1 (each painted with its index) with the given objects: labels (-1: padding), boxes."""

    classes = ["a", "b"]  # + background: 3 classes

    def __init__(self, labels: list[list[int]], boxes: list[list[list[float]]]) -> None:
        self.labels = torch.tensor(labels)
        self.boxes = torch.tensor(boxes, dtype=torch.float32)
        self.boxes[self.labels < 0] = float("nan")

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices, generator=None, objects=False):
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = idx.float()[:, None, None, None].expand(-1, 3, 4, 4)
        targets = {"object_labels": self.labels[idx], "object_boxes": self.boxes[idx]} if objects else {}
        return x, torch.zeros(len(idx), dtype=torch.long), targets


A, B, C = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 0.0, 50.0, 10.0]


def _found(*rows: tuple[list[float], int, float]) -> dict[str, torch.Tensor]:
    """Detections (box, label, score); labels as the model gives them (dataset class + 1)."""
    return {"boxes": torch.tensor([r[0] for r in rows]).reshape(-1, 4), "labels": torch.tensor([r[1] for r in rows],
            dtype=torch.long), "scores": torch.tensor([r[2] for r in rows])}


# image 0: objects a at A and b at B; image 1: object a at C (a 2nd slot of padding)
OBJECTS = HandMadeObjects([[0, 1], [0, -1]], [[A, B], [C, A]])
PERFECT = [_found((A, 1, 0.9), (B, 2, 0.8)), _found((C, 1, 0.7))]
FALSE_FIRST = [_found((A, 1, 0.9), (B, 2, 0.8), ([60.0, 60.0, 70.0, 70.0], 1, 0.95)), _found((C, 1, 0.7))]
MISSED = [_found((A, 1, 0.9), (B, 2, 0.8)), _found()]  # image 1's object a is missed


@pytest.mark.parametrize("table, ap, recall", [
    (PERFECT, 1.0, 1.0),
    # class a: FP (0.95), TP (0.9), TP (0.7): precisions 1/2, 2/3 at the hits -> (2/3 + 2/3) / 2; class b: 1
    (FALSE_FIRST, (2 / 3 + 1) / 2, 1.0),
    (MISSED, (1 / 2 + 1) / 2, 2 / 3),  # class a: one of its two objects found at precision 1
])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_ap50_on_hand_made_detections(table, ap, recall, batch_size):
    scores = evaluate_detection(PaintedDetections(table), OBJECTS, batch_size=batch_size, device="cpu")
    assert scores["ap50"] == pytest.approx(ap) and scores["recall"] == pytest.approx(recall)
    assert (scores["n"], scores["objects"]) == (2, 3)
    assert evaluate(PaintedDetections(table), OBJECTS, batch_size=batch_size, device="cpu") == scores
    # shards (as distributed evaluation takes them) concatenate to the whole split's numbers
    shards = [detection_matches(PaintedDetections(table), OBJECTS, 1, "cpu", indices=torch.tensor([i])) for i in (1, 0)]
    merged = {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}
    assert detection_scores(merged, 3, 2) == scores


def test_matching_is_greedy_by_score_and_per_label():
    second_a = [4.0, 0.0, 14.0, 10.0]  # IoU 0.43 with A
    truth_boxes, truth_labels = torch.tensor([A, second_a, B]), torch.tensor([1, 1, 2])
    # d0 overlaps both a's (IoU 0.82 with A, 0.54 with the second): takes A; d1 (= A) overlaps only A: a
    # duplicate; d2 has the wrong label; d3 IoU < 0.5; d4 takes the second a, still free
    boxes = torch.tensor([[1.0, 0.0, 11.0, 10.0], A, B, [25.0, 25.0, 35.0, 35.0], second_a])
    labels, scores = torch.tensor([1, 1, 1, 2, 1]), torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    hits = match_detections(boxes, labels, scores, truth_boxes, truth_labels)
    assert hits.tolist() == [True, False, False, False, True]
    # the duplicate ranked first takes the box: the order is the score's, not the list's
    assert match_detections(boxes[:2], labels[:2], torch.tensor([0.1, 0.8]), truth_boxes[:1],
                            truth_labels[:1]).tolist() == [False, True]
    assert average_precision(torch.tensor([0.9, 0.8]), torch.tensor([False, True]), 1) == pytest.approx(0.5)
    assert average_precision(torch.tensor([]), torch.tensor([], dtype=torch.bool), 2) == 0.0


def test_training_on_scenes_checkpoints_a_detector_with_its_ap(scenes, tmp_path):
    train_set, test_set = scenes
    result = train(_config(augment="crop_flip"), train_set, tmp_path, eval_dataset=test_set)
    first, last = result.history
    assert last["train_loss"] < first["train_loss"]
    assert "train_accuracy" not in last and math.isnan(result.train_accuracy) and result.eval_accuracy is None
    model = load_model(result.checkpoint)
    assert model.num_classes == len(train_set.classes) + 1 and model.class_names == ["background", *train_set.classes]
    x = test_set.get_batch(torch.arange(4))[0]
    with torch.no_grad():
        for mine, theirs in zip(model(x), result.model.float()(x)):
            assert torch.allclose(mine["scores"], theirs["scores"], atol=1e-5)
            assert torch.allclose(mine["boxes"], theirs["boxes"], atol=1e-3)
    scores = evaluate_detection(model, test_set, batch_size=8)
    assert scores == pytest.approx(result.eval_stats, rel=1e-5) and 0 <= scores["ap50"] <= 1
    with pytest.raises(ValueError, match="evaluate_detection"):
        predict(model, test_set)

    with torch.no_grad():
        best = model(x[:1])[0]  # the top box; its score's gradient must reach the backbone's map
    target = BoxTarget(int(best["labels"][0]), best["boxes"][0].detach())
    features = []
    handle = model.cam_hook.register_forward_hook(lambda module, inputs, out: features.append(out.retain_grad() or out))
    target(model(x[:1])[0]).backward()
    handle.remove()
    assert float(features[0].grad.abs().sum()) > 0
    explanation = camzoo.explain(model, x[:1], method="gradcam", target=target)
    assert explanation.maps.shape == (1, SIZE, SIZE) and torch.isfinite(explanation.maps).all()
    assert float(explanation.scores[0]) == pytest.approx(1 + float(best["scores"][0]), rel=1e-4)  # IoU 1 + score


def test_cli_trains_a_detector_on_scenes_and_refuses_a_dataset_without_boxes(tmp_path):
    common = ["--backbone", "resnet8", "--data-root", tmp_path / "data", "--image-size", str(SIZE), "--epochs", "1",
              "--batch-size", "16", "--lr", "0.02", "--no-progress"]
    result = cli("train", "--kind", "detector", "--dataset", "scenes", "--out", tmp_path / "run", *common,
                 "--dataset-option", "num_images=32", "--model-option", "head_convs=1")
    assert result.exit_code == 0, result.output
    assert "test AP50" in result.output and "acc" not in result.output
    model = load_model(tmp_path / "run" / "model.pt")
    assert model.kind == "detector" and model.config["options"]["head_convs"] == 1
    refused = cli("train", "--kind", "detector", "--dataset", "shapes", "--out", tmp_path / "shapes", *common,
                  "--dataset-option", "num_images=16")
    runtime_error(refused, "has no per-object boxes")
