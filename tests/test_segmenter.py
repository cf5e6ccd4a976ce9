"""The "segmenter" kind: per-pixel logits, trained by camzoo's one trainer on the class maps of
"scenes", scored by pixel accuracy and mean IoU, checkpointed, and explained per class region."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import camzoo
from camzoo.inference import evaluate, evaluate_segmentation, predict, segmentation_confusion
from camzoo.models import build_model, get_kind, load_model
from camzoo.targets import SegmentationTarget
from camzoo.train import TrainConfig, train, train_step
from camzoo.train.loop import _augment_with_map
from helpers import cli, runtime_error, scene_splits

SIZE = 32


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return scene_splits(tmp_path_factory.mktemp("cache"), SIZE)


def _config(**overrides) -> TrainConfig:
    base = dict(kind="segmenter", backbone="resnet8", epochs=2, batch_size=16, lr=0.05, seed=0, progress=False)
    return TrainConfig(**{**base, **overrides})


def test_the_segmenter_gives_per_pixel_logits_from_the_backbones_map():
    model = build_model("segmenter", "resnet8", num_classes=7).eval()
    assert model.task == "segmentation" and get_kind("baseline").task == "classification"
    assert not model.produces_attention and not hasattr(model, "fc")
    seen = []
    model.cam_hook.register_forward_hook(lambda module, inputs, out: seen.append(out.shape))
    x = torch.randn(2, 3, 40, 48)
    assert model(x).shape == (2, 7, 40, 48)
    assert seen == [(2, 64, 10, 12)]  # the default CAM layer is the backbone's final map (stride 4)
    assert model.default_cam_layer == "cam_hook"
    plain = build_model("segmenter", "resnet8", num_classes=3, head_width=0)
    assert len(plain.head) == 1 and plain(x).shape == (2, 3, 40, 48)
    with pytest.raises(ValueError, match="head_width must be an integer >= 0"):
        build_model("segmenter", "resnet8", num_classes=3, head_width=-1)


def test_a_few_steps_reduce_the_per_pixel_loss(scenes):
    train_set, _ = scenes
    x, _, targets = train_set.get_batch(torch.arange(16), objects=True)
    y = targets["segmentation"].long()
    torch.manual_seed(0)
    model = build_model("segmenter", "resnet8", len(train_set.classes) + 1).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    losses = [float(train_step(model, optimizer, scaler, x, y)[0]) for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_augmentation_moves_the_class_map_with_the_pixels():
    maps = torch.randint(0, 5, (6, 16, 16), dtype=torch.uint8)
    x = torch.randn(6, 3, 16, 16)
    x[:, 1] = maps.float() + 1  # channel 1 carries the map (+1: shifted-in zeros stay apart from class 0)
    for mode in ("flip", "crop_flip"):
        images, labels = _augment_with_map(x, maps, mode, torch.Generator().manual_seed(1))
        inside = images[:, 1] != 0
        assert torch.equal(images[:, 1][inside] - 1, labels[inside].float())
        assert (labels[~inside] == 0).all()  # shifted-in pixels are background
    assert not torch.equal(labels, maps.long())  # the draws did change something


def test_training_on_scenes_checkpoints_a_segmenter_with_its_scores(scenes, tmp_path):
    train_set, test_set = scenes
    result = train(_config(), train_set, tmp_path, eval_dataset=test_set)
    first, last = result.history
    assert last["train_loss"] < first["train_loss"]
    assert 0.5 < result.train_accuracy <= 1  # a share of pixels, not hits per image
    model = load_model(result.checkpoint)
    assert model.num_classes == len(train_set.classes) + 1
    assert model.class_names == ["background", *train_set.classes]
    x = test_set.get_batch(torch.arange(4))[0]
    with torch.no_grad():
        assert torch.allclose(model(x), result.model.float()(x), atol=1e-5)
    scores = evaluate_segmentation(model, test_set, batch_size=8)
    assert scores == pytest.approx(result.eval_stats, rel=1e-5)
    assert result.eval_accuracy == pytest.approx(scores["accuracy"], rel=1e-5)
    assert evaluate(model, test_set) == pytest.approx(scores, rel=1e-5)
    logits, maps = predict(model, test_set)
    assert logits.shape == (len(test_set), model.num_classes, SIZE, SIZE) and maps.shape == (len(test_set), SIZE, SIZE)
    assert (logits.argmax(1) == maps).float().mean().item() == pytest.approx(scores["accuracy"], rel=1e-6)

    explanation = camzoo.explain(model, x, method="gradcam", target=SegmentationTarget(1))
    assert explanation.maps.shape == (4, SIZE, SIZE) and torch.isfinite(explanation.maps).all()


class PaintedPrediction(nn.Module):
    """A "segmenter" that predicts the class written in its input's first channel (one-hot logits)."""

    task, num_classes = "segmentation", 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), self.num_classes).permute(0, 3, 1, 2).float()


class HandMadeMaps:
    """Two 2x2 images whose first channel is the prediction, with their true class maps."""

    classes = ["a", "b"]  # + background: 3 classes; class 2 ("b") is in neither truth nor prediction
    predicted = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    truth = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]], dtype=torch.uint8)

    def __len__(self) -> int:
        return 2

    def get_batch(self, indices, generator=None, objects=False):
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.predicted[idx, None].float().expand(-1, 3, -1, -1)
        return x, torch.zeros(len(idx), dtype=torch.long), {"segmentation": self.truth[idx]} if objects else {}


@pytest.mark.parametrize("batch_size", [1, 2])
def test_pixel_accuracy_and_mean_iou_on_a_hand_made_case(batch_size):
    scores = evaluate_segmentation(PaintedPrediction(), HandMadeMaps(), batch_size=batch_size, device="cpu")
    assert scores["accuracy"] == pytest.approx(7 / 8)  # one background pixel predicted as class 1
    # background: 5 hits, 6 true, 5 predicted -> 5/6; class 1: 2 hits, 2 true, 3 predicted -> 2/3; class 2 absent
    assert scores["mean_iou"] == pytest.approx((5 / 6 + 2 / 3) / 2)
    e = math.e
    assert scores["loss"] == pytest.approx((7 * math.log((e + 2) / e) + math.log(e + 2)) / 8)
    assert (scores["n"], scores["pixels"]) == (2, 8)
    # shards (as distributed evaluation takes them) add up to the whole split exactly
    whole = segmentation_confusion(PaintedPrediction(), HandMadeMaps(), batch_size, "cpu")
    shards = [segmentation_confusion(PaintedPrediction(), HandMadeMaps(), batch_size, "cpu", indices=torch.tensor([i]))
              for i in (1, 0)]
    assert torch.equal(whole[0], shards[0][0] + shards[1][0]) and whole[0][0, 1] == 1
    assert float(whole[1]) == pytest.approx(float(shards[0][1] + shards[1][1]))


def test_a_dataset_without_class_maps_is_refused_in_one_line(tmp_path):
    maps = HandMadeMaps()
    maps.classes = ["a", "b", "c"]  # 4 classes with background: not the model's 3
    with pytest.raises(ValueError, match="predicts 3 classes but the dataset's class maps have 4"):
        evaluate_segmentation(PaintedPrediction(), maps, device="cpu")
    plain = torch.utils.data.TensorDataset(torch.randn(8, 3, SIZE, SIZE), torch.arange(8) % 2)
    plain.classes = ["a", "b"]
    with pytest.raises(ValueError, match="has no per-pixel class maps") as err:
        train(_config(epochs=1), plain, tmp_path)
    assert "\n" not in str(err.value) and "'scenes'" in str(err.value)


def test_cli_trains_a_segmenter_on_scenes_and_refuses_a_dataset_without_maps(tmp_path):
    common = ["--backbone", "resnet8", "--data-root", tmp_path / "data", "--image-size", str(SIZE), "--epochs", "1",
              "--batch-size", "16", "--no-progress"]
    result = cli("train", "--kind", "segmenter", "--dataset", "scenes", "--out", tmp_path / "run", *common,
                 "--dataset-option", "num_images=32", "--model-option", "head_width=16")
    assert result.exit_code == 0, result.output
    assert "train pixel acc" in result.output and "test mIoU" in result.output
    model = load_model(tmp_path / "run" / "model.pt")
    assert model.kind == "segmenter" and model.config["options"]["head_width"] == 16
    refused = cli("train", "--kind", "segmenter", "--dataset", "shapes", "--out", tmp_path / "shapes", *common,
                  "--dataset-option", "num_images=16")
    runtime_error(refused, "has no per-pixel class maps")
