"""Streaming evaluation and per-entry preprocessing (issue 21).

The evaluation images go through each model in blocks (``eval.block_images``): block-wise scores must
equal whole-set scores for every metric, maps are stored for the first ``eval.keep_maps`` images only,
and the gallery and report.html still work. A ``[[models]]`` entry's ``image_size``, ``mean``/``std``
and ``reshape`` must reach what the model sees and what the method computes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from camzoo.bench.config import resolve_config
from camzoo.bench.datasets import class_order
from camzoo.bench.explore import latest_run
from camzoo.bench.record import RunRecord
from camzoo.bench.plan import build_plan
from camzoo.bench.report import gallery_plot
from camzoo.bench.runner import BenchRunner
from camzoo.bench.sources import ModelSource
from camzoo.bench.store import ResultsStore
from camzoo.cli import main
from camzoo.data import load
from camzoo.metrics import METRICS, EvalSettings, combine_blocks, score_maps
from helpers import quadrant_batch
from helpers import timm_weights, write_folder

TIMINGS = {"ms_per_image", "peak_memory_mb"}


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """Each mask's bounding box (B,1,4) in pixel edges."""
    rows, cols = masks.any(2), masks.any(1)
    first = lambda a: a.float().argmax(1)  # noqa: E731
    last = lambda a: a.shape[1] - a.flip(1).float().argmax(1)  # noqa: E731
    return torch.stack([first(cols), first(rows), last(cols), last(rows)], 1).float()[:, None]


@pytest.fixture(scope="module")
def scored() -> dict:
    """An untrained ResNet on 16 quadrant images with smooth random maps: every metric has work to do."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    images, labels, masks = quadrant_batch(16, size=32, seed=3)
    maps = torch.nn.functional.interpolate(torch.rand(16, 1, 4, 4), size=(32, 32), mode="bilinear")[:, 0]
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True))
    return {"model": model, "images": images, "labels": labels, "masks": masks, "maps": maps}


@pytest.mark.parametrize("block", [3, 5, 8])
def test_block_wise_scores_equal_the_whole_set(scored, block):
    model, images, labels, masks, maps = (scored[k] for k in ("model", "images", "labels", "masks", "maps"))
    settings = EvalSettings(deletion_steps=4, deletion_fraction=0.5, substrates=("zeros",), game_images=7,
                            chunk_size=16)
    boxes = _boxes(masks)
    whole = score_maps(model, images, maps, labels, masks, boxes, settings)
    parts = [score_maps(model, images[a:a + block], maps[a:a + block], labels[a:a + block], masks[a:a + block],
                        boxes[a:a + block], settings, start=a) for a in range(0, len(images), block)]
    joined = combine_blocks(parts, labels)
    assert set(joined) == set(whole)
    assert {"deletion", "max_box_acc_v1", "max_box_acc_v2", "pxap", "pointing_game_class_mean"} <= set(whole)
    for name, (value, per_image) in whole.items():  # forwards batched differently: float noise (percent units)
        assert joined[name][0] == pytest.approx(value, rel=1e-4, abs=1e-4), name
        if per_image is not None:
            np.testing.assert_allclose(joined[name][1], per_image, rtol=1e-4, atol=1e-4, err_msg=name)
    # the dataset-level metrics are exact: the same hit tables and histograms, joined
    for name in ("max_box_acc_v1", "max_box_acc_v2", "pxap", "pointing_game_class_mean", "pointing_game"):
        assert joined[name][0] == whole[name][0], name
    assert joined["deletion"][1].shape == (7,)  # the games: the set's first game_images, wherever they lie


def test_metrics_that_build_new_inputs_run_on_the_first_block_only(scored):
    model, images, labels = scored["model"], scored["images"], scored["labels"]
    maps = scored["maps"][8:]
    settings = EvalSettings(deletion_steps=2, substrates=(), game_images=4, sensitivity=("random_logit_similarity",))
    later = score_maps(model, images[8:], maps, labels[8:], None, None, settings, method="gradcam", start=8)
    assert "random_logit_similarity" not in later and "deletion" not in later  # games: images 0..3 only
    assert {info.name for info in METRICS.values() if info.reads == "inputs"} >= {
        "gridpg_2x2", "difull_2x2", "focus", "random_logit_similarity", "randomisation_spearman", "grid_qualified"}


def _config(tmp_path: Path, folder: Path, entries: str, evaluation: str, name: str, images: int = 16,
            methods: str = '"gradcam", "@controls"') -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'''
methods = [{methods}]
{entries}
[[datasets]]
name = "annotated"
root = "{folder}"
image_size = 32
[eval]
images = {images}
batch_size = 4
deletion_steps = 4
substrates = []
gallery_images = 2
grid_games = []
{evaluation}
''', encoding="utf-8")
    return path


def _bench(config: Path, out: Path, *flags: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--no-progress", "--config", str(config), "--out", str(out), *flags])
    assert result.exit_code == 0, result.output


def _run(config: Path, out: Path) -> None:
    """The harness alone (no report): what the runner stores."""
    BenchRunner(build_plan(resolve_config(None, config)), out, progress=False, echo=lambda _: None).run()


def _values(out: Path) -> dict[tuple, tuple]:
    with ResultsStore(out) as store:
        rows = store.results(latest_run(store)["run_id"], with_per_image=True)
    return {(r["backbone"], r["seed"], r["method"], r["metric"]): (r["value"], r["per_image"]) for r in rows
            if r["metric"] not in TIMINGS}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("stream") / "photos", per_class=4, side=40)


def test_streamed_blocks_score_as_one_and_keep_maps_for_the_first_images(folder, tmp_path):
    checkpoint = timm_weights(tmp_path / "a.pth", num_classes=4)
    entry = f'[[models]]\nname = "resnet10t"\ncheckpoints = ["{checkpoint}"]\n'
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    methods = '"gradcam", "centre", "oracle"'  # a control's map-only results are shared across blocks' memos
    _run(_config(tmp_path, folder, entry, "game_images = 10", "whole", methods=methods), whole)
    _bench(_config(tmp_path, folder, entry, "game_images = 10\nblock_images = 8\nkeep_maps = 3", "streamed",
                   methods=methods), streamed, "--html")
    expected, found = _values(whole), _values(streamed)
    assert set(found) == set(expected)
    first_block = {info.name for info in METRICS.values() if info.reads == "inputs"}
    for key, (value, per_image) in expected.items():  # the games' forwards batch differently: float noise only
        if key[3] in first_block:  # the Random Logit test explains the first block's 8 images only
            assert found[key][1].shape == (8,) and per_image.shape == (16,)
            continue
        assert found[key][0] == pytest.approx(value, rel=1e-4, abs=1e-4, nan_ok=True), key
        if per_image is not None:
            np.testing.assert_allclose(found[key][1], per_image, rtol=1e-4, atol=1e-4, err_msg=str(key))
    assert expected[("resnet10t", 0, "gradcam", "pointing_game")][1].shape == (16,)  # every image's value kept
    with ResultsStore(streamed) as store:
        run = latest_run(store)["run_id"]
        maps = dict((cell.method, array) for cell, array in store.arrays(run, "maps"))
        gallery = {name: array for name in ("images", "eval_images", "eval_boxes", "fingerprint")
                   for _, array in store.arrays(run, name, method="gallery")}
        logits = [array for _, array in store.arrays(run, "eval_logits")]
    with ResultsStore(whole) as store:
        whole_maps = dict((cell.method, array) for cell, array in store.arrays(latest_run(store)["run_id"], "maps"))
        (fingerprint,) = [array for _, array in store.arrays(latest_run(store)["run_id"], "fingerprint")]
    assert maps["gradcam"].shape == (3, 32, 32) and whole_maps["gradcam"].shape == (16, 32, 32)
    np.testing.assert_array_equal(maps["gradcam"], whole_maps["gradcam"][:3])
    assert gallery["eval_images"].shape[0] == 3 and gallery["eval_boxes"].shape[0] == 3
    assert gallery["images"].shape[0] == 2 and logits[0].shape == (3, 4)
    assert str(gallery["fingerprint"]) == str(fingerprint)  # the same images, hashed block by block
    html = (streamed / "report.html").read_text(encoding="utf-8")
    assert "resnet10t" in html and (streamed / "gallery_annotated_resnet10t.png").stat().st_size > 0


def test_entry_overrides_reach_the_images_and_the_method(folder, tmp_path, monkeypatch):
    checkpoint = timm_weights(tmp_path / "a.pth", num_classes=4)
    (tmp_path / "flipping.py").write_text("def flip(output):\n    return output.flip(-1)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = "".join(f'[[models]]\nname = "resnet10t"\ncheckpoints = ["{checkpoint}"]\nlabel = "{label}"\n{extra}\n'
                      for label, extra in (("plain", ""), ("flipped", 'reshape = "flipping:flip"'),
                                           ("big", "image_size = 48\nmean = [0.5]\nstd = [0.25, 0.5, 0.2]")))
    out = tmp_path / "out"
    _run(_config(tmp_path, folder, entries, "game_images = 2\nsensitivity = []", "overrides", images=8,
                 methods='"gradcam"'), out)
    with ResultsStore(out) as store:
        run = latest_run(store)["run_id"]
        maps = {cell.backbone: array for cell, array in store.arrays(run, "maps", method="gradcam")}
        logits = {cell.backbone: array for cell, array in store.arrays(run, "eval_logits")}
    assert maps["plain"].shape == (8, 32, 32) and maps["big"].shape == (8, 48, 48)  # image_size
    # reshape: Grad-CAM of the flipped feature map is the flipped map
    np.testing.assert_allclose(maps["flipped"].astype(np.float32), maps["plain"][..., ::-1].astype(np.float32),
                               atol=2e-3)
    # mean/std: the model sees the folder's pixels normalised with the entry's statistics
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    # the run's evaluation images: the folder's, taken class by class (camzoo.bench.datasets.class_order)
    default, big = (class_order(load("annotated", "test", root=str(folder), image_size=side)) for side in (32, 48))
    default = torch.stack([default[i][0] for i in range(8)])
    pixels = torch.stack([big[i][0] for i in range(8)]) * torch.tensor(big.std).view(3, 1, 1) + torch.tensor(
        big.mean).view(3, 1, 1)
    mine = (pixels - 0.5) / torch.tensor([0.25, 0.5, 0.2]).view(3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(logits["big"], model.eval()(mine).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(logits["plain"], model(default).numpy(), rtol=1e-4, atol=1e-4)
    # the gallery shows the 48-px entry's maps over the dataset's 32-px images
    with ResultsStore(out) as store:
        assert gallery_plot(store, RunRecord.from_store(store, run), "annotated", "big", tmp_path / "big.png").stat().st_size > 0


def test_normalisation_defaults_follow_camzoo_explain():
    split = SimpleNamespace(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    vit = torch.nn.Conv2d(3, 1, 1)
    vit.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    plain = ModelSource(None, "a.pth", "a", {}, None)
    assert plain.normalisation(vit, split, explicit=False) == ((0.5,) * 3, (0.5,) * 3)  # the model's own
    assert plain.normalisation(torch.nn.Conv2d(3, 1, 1), split, explicit=False) == (split.mean, split.std)  # none declared
    assert plain.normalisation(vit, split, explicit=True) == (split.mean, split.std)  # the dataset options' win
    own = ModelSource(None, "a.pth", "a", {}, None, mean=(0.2,), std=(0.3, 0.4, 0.5))
    assert own.normalisation(vit, split, explicit=True) == ((0.2,) * 3, (0.3, 0.4, 0.5))  # the entry's win, per channel
    gray = torch.nn.Conv2d(1, 1, 1)  # a grayscale model: one value each, the averages
    assert np.allclose(plain.normalisation(gray, split, explicit=True), ((0.2,), (0.5,)))


def test_bad_overrides_are_one_line_each_and_leave_nothing(folder, tmp_path):
    entry = ('[[models]]\nname = "resnet10t"\ncheckpoints = ["a.pth"]\nimage_size = 4\nmean = [1, 2]\n'
             'std = [0.5, 0.0, 0.5]\nreshape = "no_such_module:flip"\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--no-progress", "--config",
                                       str(_config(tmp_path, folder, entry, "block_images = 0\nkeep_maps = -1", "bad")),
                                       "--out", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    for message in ("models[0].image_size must be an integer >= 8", "models[0].mean must be a list of 1 or 3",
                    "models[0].std must be a list of 1 or 3 positive", "reshape 'no_such_module:flip' cannot be imported",
                    "eval.block_images must be a positive integer", "eval.keep_maps must be an integer >= 0",
                    "nothing was run or written"):
        assert message in result.output, (message, result.output)
    assert not (out / "results.sqlite").exists()


def test_a_model_that_does_not_run_at_the_entry_size_is_one_line(folder, tmp_path):
    torch.manual_seed(0)
    vit = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=64).state_dict(), vit)
    entry = (f'[[models]]\nname = "vit_tiny_patch16_224"\ncheckpoints = ["{vit}"]\noptions = {{img_size = 64}}\n'
             "image_size = 48\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--no-progress", "--config", str(_config(tmp_path, folder, entry, "", "vit")),
                                       "--out", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "it does not run on 48 px images" in result.output and "nothing was run or written" in result.output
    assert not (out / "results.sqlite").exists()


def test_keep_maps_zero_stores_no_maps_and_no_stability(folder, tmp_path):
    a, b = timm_weights(tmp_path / "a.pth", num_classes=4), tmp_path / "b.pth"
    b.write_bytes(a.read_bytes())
    entry = f'[[models]]\nname = "resnet10t"\ncheckpoints = ["{a}", "{b}"]\n'
    out = tmp_path / "out"
    _run(_config(tmp_path, folder, entry, "game_images = 2\nsensitivity = []\nkeep_maps = 0", "nomaps", images=4,
                 methods='"gradcam"'), out)
    with ResultsStore(out) as store:
        run = latest_run(store)["run_id"]
        assert not list(store.arrays(run, "maps")) and not [c for c in store.cells(run) if c.seed == -1 and c.method != "gallery"]
        (images,) = [array for _, array in store.arrays(run, "eval_images", method="gallery")]
        record = RunRecord.from_store(store, run)
        assert images.shape[0] == 0 and gallery_plot(store, record, "annotated", "resnet10t", tmp_path / "g.png") is None
        assert len(store.results(run)) > 0
