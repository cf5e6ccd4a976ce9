"""``camzoo explain --task segmentation | detection``: options, their one-line errors, box selection,
and overlays that draw the explained box or the mask's outline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from camzoo.cli.tasks import TaskPlan, parse_box
from camzoo.explanation import Explanation

from helpers import cli, picture, usage_error

SEGMENTER = "torchvision:lraspp_mobilenet_v3_large"  # the quickest segmenter to build
DETECTOR = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
TINY = ("--model-option", "min_size=64", "--model-option", "max_size=64")


def explanation(batch: int = 2, height: int = 32, width: int = 48) -> Explanation:
    return Explanation(maps=torch.rand(batch, height, width), raw=torch.rand(batch, 4, 6),
                       targets=torch.arange(batch), scores=torch.ones(batch), method="gradcam", layer=None,
                       inputs=torch.zeros(batch, 3, height, width))


def white(image: Image.Image) -> np.ndarray:
    return (np.asarray(image) == 255).all(axis=-1)


def test_overlay_draws_the_box_scaled_to_the_photo():
    result = explanation()
    drawn = white(result.overlay(0, alpha=0.0, box=(10, 8, 30, 20)))  # on a black input: only the box is white
    rows, cols = np.nonzero(drawn)
    assert (rows.min(), cols.min(), rows.max(), cols.max()) == (8, 10, 19, 29)
    assert not drawn[9:19, 11:29].any()  # an outline, not a filled rectangle
    on_photo = white(result.overlay(0, alpha=0.0, box=torch.tensor([10.0, 8, 30, 20]), image=Image.new("RGB", (96, 64))))
    rows, cols = np.nonzero(on_photo)
    assert (rows.min(), cols.min(), rows.max(), cols.max()) == (16, 20, 39, 59)
    with pytest.raises(ValueError, match="x0 < x1"):
        result.overlay(0, box=(30, 8, 10, 20))


def test_overlay_draws_the_mask_outline_and_save_takes_one_per_image(tmp_path):
    result = explanation()
    mask = np.zeros((32, 48), bool)
    mask[8:20, 10:30] = True
    drawn = white(result.overlay(1, alpha=0.0, outline=mask))
    assert drawn.sum() == 2 * (12 + 20) - 4  # the one-pixel boundary of a 12 x 20 rectangle
    assert drawn[8, 10:30].all() and not drawn[9:19, 11:29].any() and not drawn[~mask].any()
    full = white(result.overlay(0, alpha=0.0, outline=np.ones((32, 48), bool)))
    assert full[0].all() and full[-1].all() and not full[1:-1, 1:-1].any()  # closed at the border
    half = white(result.overlay(0, alpha=0.0, outline=mask[::2, ::2]))  # another resolution: resized
    assert half[8, 10:30].all()
    result.save(tmp_path / "s", boxes=[(10, 8, 30, 20), None], outlines=torch.stack([torch.zeros(32, 48), torch.tensor(mask)]))
    assert white(Image.open(tmp_path / "s" / "overlay_0000.png")).any()
    assert np.array_equal(white(Image.open(tmp_path / "s" / "overlay_0001.png")), drawn | white(result.overlay(1)))
    with pytest.raises(ValueError, match="one entry .or None. per image: got 1 for 2"):
        result.save(tmp_path / "t", boxes=[(1, 2, 3, 4)])


def test_detected_boxes_above_the_score_best_first_at_most_max_boxes():
    said: list[str] = []
    detections = {"boxes": torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4.0]]),
                  "scores": torch.tensor([0.6, 0.9, 0.2]), "labels": torch.tensor([1, 2, 1])}
    plan = TaskPlan("detection", None, score=0.5, max_boxes=10)
    assert plan._detected(detections, None, 0, lambda k, t: said.append(t)) == [
        (2, pytest.approx(0.9), (5.0, 5.0, 20.0, 20.0)), (1, pytest.approx(0.6), (0.0, 0.0, 10.0, 10.0))]
    assert [c[0] for c in TaskPlan("detection", None, score=0.0, max_boxes=2)._detected(detections, None, 0, print)] == [2, 1]
    assert [c[1] for c in plan._detected(detections, 1, 0, print)] == [pytest.approx(0.6)]  # --target filters labels
    assert not said
    assert TaskPlan("detection", None, score=0.95)._detected(detections, None, 0, lambda k, t: said.append(t)) == []
    assert "no box scores >= 0.95 (the best scores 0.9); lower --score, e.g. --score " in said[-1]
    suggested = float(said[-1].split("e.g. --score ")[1].split(",")[0])
    assert 0.85 <= suggested <= detections["scores"][1]  # a threshold that keeps the best box
    empty = {key: value[:0] for key, value in detections.items()}
    plan._detected(empty, None, 0, lambda k, t: said.append(t))
    assert said[-1] == "the model detects no box in this image"


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "1,2,3,4,5", "-1,0,4,4", "1,2,nan,4", ""])
def test_malformed_boxes_are_refused(text):
    with pytest.raises(Exception, match="is not x0,y0,x1,y1"):
        parse_box(text)
    with pytest.raises(Exception, match="empty box: it needs x0 < x1"):
        parse_box("10,10,10,20")
    assert parse_box("1,2,3.5,4") == (1.0, 2.0, 3.5, 4.0)


def test_options_of_another_task_and_bad_masks_are_one_line_usage_errors(tmp_path):
    photo = picture(tmp_path / "a.png", size=(40, 30))
    mask = tmp_path / "m.png"
    Image.fromarray(np.pad(np.full((10, 10), 255, np.uint8), 10)).save(mask)
    out = ("--out", tmp_path / "o")
    seg = ("explain", photo, "--model", SEGMENTER, *out)
    det = ("explain", photo, "--model", DETECTOR, *TINY, *out)
    usage_error(cli(*seg, "--target", "1", "--box", "1,2,3,4"), "--box is for --task detection, and this run's task is "
                                                               "segmentation")
    usage_error(cli(*seg, "--target", "1", "--score", "0.3"), "--score is for --task detection")
    usage_error(cli(*det, "--mask", mask), "--mask is for --task segmentation, and this run's task is detection")
    usage_error(cli(*seg, "--task", "detection"), "--task detection, but this model is a segmentation model")
    usage_error(cli(*seg), "--task segmentation needs --target CLASS")
    usage_error(cli(*seg, "--target", "1", "--mask", mask, "--mask", mask), "got 2 masks for 1 images")
    usage_error(cli(*det, "--box", "1,2,30,20"), "--box needs exactly one --target CLASS")
    usage_error(cli(*det, "--target", "1", "--box", "1,2,30,20", "--score", "0.2"), "--score picks detected boxes")
    usage_error(cli(*det, "--target", "1", "--box", "1,2,3"), "'1,2,3' is not x0,y0,x1,y1")
    usage_error(cli(*det, "--target", "1", "--box", "10,10,41,20"), "a.png (40x30 px): give it in that photo's pixels")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    usage_error(cli(*seg, "--target", "1", "--mask", tmp_path / "bad.png"), "bad.png' as a mask image")
    usage_error(cli(*seg, "--target", "1", "--mask", tmp_path / "missing.png"), "missing.png' as a mask image")
    Image.new("L", (8, 8)).save(tmp_path / "zero.png")
    usage_error(cli(*seg, "--target", "1", "--mask", tmp_path / "zero.png"), "zero.png' has no nonzero pixel")
    usage_error(cli(*det, "--model-option", "box_score_tresh=0"), "did you mean 'box_score_thresh'")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# --- end to end, on random-init torchvision models saved as state_dicts ---------------------------


@pytest.fixture(scope="module")
def segmenter_weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg") / "fcn.pth"
    torch.save(torchvision.models.get_model("fcn_resnet50", weights=None, weights_backbone=None, num_classes=3)
               .state_dict(), path)
    return path


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("det") / "frcnn.pth"
    torch.save(torchvision.models.get_model(DETECTOR.split(":")[1], weights=None, weights_backbone=None,
                                            num_classes=3).state_dict(), path)
    return path


def test_segmentation_explains_the_mask_or_the_predicted_region(tmp_path, segmenter_weights):
    from camzoo.inputs import prepare_images
    from camzoo.models.loading import load_any_model

    photo = picture(tmp_path / "a.png", size=(64, 64))
    model = load_any_model("torchvision:fcn_resnet50", segmenter_weights)
    with torch.no_grad():
        predicted = model(prepare_images(Image.open(photo), model))["out"].argmax(1)[0]
    common = ("explain", photo, "--model", "torchvision:fcn_resnet50", "--checkpoint", segmenter_weights,
              "--no-progress")
    result = cli(*common, "--target", str(int(predicted.flatten().mode().values)), "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert "gradcam class" in result.output and "region" in result.output
    drawn = white(Image.open(tmp_path / "p" / "a_gradcam.png"))
    assert drawn.any()  # the predicted region's outline
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 8:32] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    result = cli(*common, "--target", "2", "--mask", tmp_path / "m.png", "--out", tmp_path / "m")
    assert result.exit_code == 0, result.output
    drawn = white(Image.open(tmp_path / "m" / "a_gradcam.png"))
    rows, cols = np.nonzero(drawn)
    assert (rows.min(), cols.min(), rows.max(), cols.max()) == (16, 8, 39, 31) and not drawn[17:39, 9:31].any()
    row = (tmp_path / "m" / "manifest.csv").read_text().splitlines()
    assert row[0].endswith("overlay,map") and ",2,2," in row[1]  # target 2, named by its index
    usage_error(cli(*common, "--target", "3", "--out", tmp_path / "x"), "target 3 is out of range for a model with 3 "
                                                                      "classes (valid: 0..2)")
    usage_error(cli(*common, "--target", "sky", "--out", tmp_path / "x"), "'sky' is a class name, but this model has "
                                                                        "no class names")


def test_detection_explains_every_box_above_the_score_or_the_given_box(tmp_path, detector_weights):
    import csv

    photo = picture(tmp_path / "a.png", size=(80, 64))
    common = ("explain", photo, "--model", DETECTOR, "--checkpoint", detector_weights, *TINY,
              "--model-option", "box_score_thresh=0.0", "--no-progress")
    result = cli(*common, "--score", "0", "--max-boxes", "2", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "d" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["overlay"] for r in rows] == ["a_gradcam_box0.png", "a_gradcam_box1.png"]
    assert float(rows[0]["box_score"]) >= float(rows[1]["box_score"]) and rows[0]["box"].count(",") == 3
    assert result.output.count("detected with score") == 2
    for r in rows:  # each overlay draws its own box, in the photo's pixels
        x0, y0, x1, y1 = (float(v) for v in r["box"].split(","))
        drawn = white(Image.open(tmp_path / "d" / r["overlay"]))
        assert drawn.any() and Image.open(tmp_path / "d" / r["overlay"]).size == (80, 64)
        rows_, cols_ = np.nonzero(drawn)
        assert abs(cols_.min() - x0) <= 1 and abs(rows_.min() - y0) <= 1 and abs(cols_.max() + 1 - x1) <= 1.5
    result = cli(*common, "--score", "0.999", "--out", tmp_path / "n")
    assert result.exit_code == 0 and "no box scores >= 0.999 (the best scores" in result.output, result.output
    assert "lower --score" in result.output and not list((tmp_path / "n").glob("*.png"))
    result = cli(*common, "--target", "1", "--box", "8,16,40,48", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "box 0 class 1 [8.0,16.0,40.0,48.0]" in result.output
    # a box no detection of its class matches gets a zero target and one note line, not a Python warning
    assert "(target 0)" not in result.output or "no predicted box of that label" in result.output
    assert "UserWarning" not in result.output
    drawn = white(Image.open(tmp_path / "b" / "a_gradcam_box0.png"))
    rows_, cols_ = np.nonzero(drawn)
    assert (rows_.min(), cols_.min(), rows_.max(), cols_.max()) == (16, 8, 47, 39)
    usage_error(cli(*common, "--target", "0", "--out", tmp_path / "x"), "0 is a detector's background class")
    usage_error(cli(*common, "--target", "3", "--out", tmp_path / "x"), "target 3 is out of range for a model with 3")


def users_model(tmp_path, monkeypatch, module: str, source: str) -> tuple:
    """The user's own model, ``MODULE:build`` written from ``source`` and importable, and the common
    arguments of explaining a 48x40 photo with it at 64 px."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    photo = picture(tmp_path / "a.png", size=(48, 40))
    return "explain", photo, "--model", f"{module}:build", "--image-size", "64", "--no-progress"


def test_a_users_own_segmenter_needs_task_segmentation(tmp_path, monkeypatch):
    common = users_model(tmp_path, monkeypatch, "my_segmenters", (
        "import torchvision\n\n\n"
        "def build(num_classes=3):\n"
        "    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(\n"
        "        weights=None, weights_backbone=None, num_classes=num_classes)\n"))
    usage_error(cli(*common, "--out", tmp_path / "x"), "not class logits; pass --task segmentation or --task detection")
    mask = np.zeros((40, 48), np.uint8)
    mask[:20] = 1
    Image.fromarray(mask).save(tmp_path / "top.png")
    result = cli(*common, "--task", "segmentation", "--target", "2", "--mask", tmp_path / "top.png", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    drawn = white(Image.open(tmp_path / "o" / "a_gradcam.png"))  # the top half's outline, back at the photo's size
    assert drawn.shape == (40, 48) and drawn[0].all() and drawn[19].all() and not drawn[21:].any()


def test_an_output_without_logits_is_an_output_problem_not_a_size_problem(tmp_path, monkeypatch):
    """The model runs at the probe's size; what fails is reading its output: the message says so and names
    the CLI's --output, not the API's output=."""
    common = users_model(tmp_path, monkeypatch, "my_dicts", (
        "import torch\n\n\n"
        "class Scores(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3)\n\n"
        "    def forward(self, x):\n"
        "        return {'scores': self.conv(x).mean((2, 3))}\n\n\n"
        "def build():\n"
        "    return Scores()\n"))
    result = cli(*common, "--out", tmp_path / "x")
    usage_error(result, "reading the model's output")
    assert "--output" in result.output and "cannot run at" not in result.output
    assert cli(*common, "--output", "scores", "--out", tmp_path / "o").exit_code == 0
