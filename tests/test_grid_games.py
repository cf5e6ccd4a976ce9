"""Grid Pointing Game, Focus, and the DiFull / DiPart wrappers (camzoo.metrics.grids, camzoo.metrics.grid_models).

The scores are checked against a plain loop-per-map transcription of the paper's rule; the
wrappers' disconnection is checked on exact gradients; the controls (oracle = 1, random = chance)
and LayerCAM/HiResCAM's exact zero outside the target cell on DiFull are checked end to end through
``camzoo.explain``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camzoo
from camzoo.metrics.focus_mosaics import build_focus_mosaics, focus, make_focus_mosaics
from camzoo.metrics.grid_models import play_grid_game
from camzoo.metrics.grids import (
    build_grids,
    cell_masks,
    cell_shares,
    confident_cells,
    grid_pointing_game,
    grid_targets,
    make_grids,
)
from camzoo.metrics.grid_models import DiFull, DiPart, grid_wrapper


# --- an independent transcription of the scores -----------------------------------------------
def reference_shares(maps: torch.Tensor, n: int, size: tuple[int, int] | None) -> np.ndarray:
    """Per map, per cell: sum of positive values in the cell / sum of positive values (0 if <= 1e-7)."""
    out = np.zeros((maps.shape[0], n * n))
    for b in range(maps.shape[0]):
        m = maps[b]
        if size is not None:
            m = F.interpolate(m[None, None].double(), size=size, mode="bilinear", align_corners=False)[0, 0]
        a = m.double().numpy()
        total = sum(max(v, 0.0) for v in a.ravel())
        if total <= 1e-7:
            continue
        ch, cw = a.shape[0] // n, a.shape[1] // n
        for r in range(n):
            for c in range(n):
                block = a[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw]
                out[b, r * n + c] = block[block > 0].sum() / total
    return out


def plateaued_maps(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Maps with wide flat regions and ties, plus the degenerate ones: zero, constant, tiny."""
    g = torch.Generator().manual_seed(seed)
    coarse = (torch.rand(count, 1, 3, 3, generator=g) * 3).floor() / 2 - 0.25       # levels -0.25, 0.25, 0.75
    maps = F.interpolate(coarse, size=(height, width), mode="nearest")[:, 0]
    maps[0] = 0.0
    maps[1] = 0.5
    maps[2] = 0.0
    maps[2, 0, 0] = 5e-8                              # total <= 1e-7: scores 0
    maps[3] = -1.0
    maps[3, -1, -1] = 2e-7                            # just above: all mass in the last cell
    return maps


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("size", [None, (24, 24)])
def test_gridpg_equals_transcription_on_random_and_plateaued_maps(n: int, size) -> None:
    g = torch.Generator().manual_seed(n)
    random_maps = torch.randn(16, 12, 12, generator=g)
    for maps in (random_maps, plateaued_maps(16, 12, 12, seed=n)):
        cells = torch.randint(0, n * n, (maps.shape[0],), generator=g)
        ref = reference_shares(maps, n, size)
        got = grid_pointing_game(maps, cells, n, size=size)
        expected = ref[np.arange(len(ref)), cells.numpy()]
        np.testing.assert_allclose(got["per_image"].numpy(), expected, rtol=1e-6, atol=1e-7)
        assert float(got["gridpg"]) == pytest.approx(expected.mean(), abs=1e-6)
        assert got["chance"] == 1 / n**2
        np.testing.assert_allclose(cell_shares(maps, n, size).numpy(), ref, atol=1e-9)


def test_degenerate_maps_follow_the_rule() -> None:
    maps = plateaued_maps(4, 12, 12, seed=0)
    shares = cell_shares(maps, 2)
    assert torch.equal(shares[0], torch.zeros(4, dtype=shares.dtype))          # all zero
    assert torch.allclose(shares[1], torch.full((4,), 0.25, dtype=shares.dtype))  # constant: 1/N² each
    assert torch.equal(shares[2], torch.zeros(4, dtype=shares.dtype))          # total 5e-8 <= 1e-7
    assert torch.allclose(shares[3], torch.tensor([0, 0, 0, 1.0], dtype=shares.dtype))


def test_oracle_scores_one_and_random_sits_at_chance() -> None:
    g = torch.Generator().manual_seed(0)
    for n in (2, 3):
        cells = torch.randint(0, n * n, (300,), generator=g)
        oracle = cell_masks(cells, n, 24, 24).float()
        assert torch.equal(grid_pointing_game(oracle, cells, n)["per_image"], torch.ones(300))
        noise = torch.rand(300, 24, 24, generator=g)
        score = float(grid_pointing_game(noise, cells, n)["gridpg"])
        assert abs(score - 1 / n**2) < 0.01, score
    # upsampled from a coarse map: the oracle stays exactly 1 when the coarse map is aligned with the cells
    coarse = cell_masks(torch.tensor([1, 2]), 2, 4, 4).float()
    assert torch.equal(grid_pointing_game(coarse, [1, 2], 2, size=(4, 4))["per_image"], torch.ones(2))


def test_score_validates_inputs() -> None:
    maps = torch.rand(3, 12, 12)
    with pytest.raises(ValueError, match="grid_size must be an int >= 2"):
        grid_pointing_game(maps, [0, 0, 0], 1)
    with pytest.raises(ValueError, match="cannot be cut into 5x5"):
        grid_pointing_game(maps, [0, 0, 0], 5)
    with pytest.raises(ValueError, match="target_cells must lie in"):
        grid_pointing_game(maps, [0, 4, 0], 2)
    with pytest.raises(ValueError, match="target_cells must be"):
        grid_pointing_game(maps, [0, 1], 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        grid_pointing_game(torch.full((1, 4, 4), float("nan")), [0], 2)


# --- building grids and mosaics ---------------------------------------------------------------
def class_images(labels: torch.Tensor, height: int = 6, width: int = 10) -> torch.Tensor:
    """Images whose every pixel encodes (class, index), so a tile can be traced to its source."""
    index = torch.arange(len(labels), dtype=torch.float32)
    rows = torch.arange(height, dtype=torch.float32)[:, None] / 100
    cols = torch.arange(width, dtype=torch.float32)[None, :] / 1000
    base = (labels.float() * 1000 + index)[:, None, None, None]
    return (base + rows + cols).expand(-1, 3, -1, -1).contiguous()


@pytest.mark.parametrize("n", [2, 3])
def test_make_grids_distinct_classes_and_row_major_tiles(n: int) -> None:
    labels = torch.arange(40) % 10
    images = class_images(labels)                   # non-square cells: an axis swap would show
    grids = make_grids(images, labels, n, num_grids=50, seed=1)
    assert grids["images"].shape == (50, 3, 6 * n, 10 * n)
    assert all(len(set(row.tolist())) == n * n for row in grids["labels"])
    assert torch.equal(labels[grids["sources"]], grids["labels"])
    for g in range(50):
        for cell in range(n * n):
            r, c = divmod(cell, n)
            tile = grids["images"][g, :, r * 6:(r + 1) * 6, c * 10:(c + 1) * 10]
            assert torch.equal(tile, images[grids["sources"][g, cell]])
    again = make_grids(images, labels, n, num_grids=50, seed=1)
    assert torch.equal(again["sources"], grids["sources"])
    assert not torch.equal(make_grids(images, labels, n, num_grids=50, seed=2)["sources"], grids["sources"])
    jobs = grid_targets(grids["labels"])
    assert jobs["grid"].shape == (50 * n * n,)
    assert torch.equal(jobs["target"], grids["labels"].flatten())
    corners = grid_targets(grids["labels"], cells=[0, n * n - 1])
    assert torch.equal(corners["cell"][:2], torch.tensor([0, n * n - 1]))


def test_make_grids_needs_enough_classes() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="needs 4 distinct classes.*cover only 3"):
        make_grids(class_images(labels), labels, 2)
    with pytest.raises(ValueError, match="grid_size must be an int >= 2"):
        make_grids(class_images(labels), labels, 1)


class ValueClassifier(nn.Module):
    """Logits -40 * (mean pixel - k)^2: confident where the image's value is an integer k."""

    num_classes = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = x.mean(dim=(1, 2, 3))
        return -40.0 * (value[:, None] - torch.arange(self.num_classes, dtype=x.dtype)) ** 2


def test_confident_cells_and_build_grids_keep_only_correct_confident_images() -> None:
    values = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3.5, 4, 5], dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2, 2, 3, 4, 5])   # index 7 wrong; index 9 unsure (3.5)
    images = values[:, None, None, None].expand(-1, 3, 8, 8).contiguous()
    model = ValueClassifier()
    cells = confident_cells(model, images, labels)
    assert cells["qualified"] == 10
    assert set(cells["indices"].tolist()) == set(range(12)) - {7, 9}
    grids = build_grids(model, images, labels, grid_size=2, num_grids=30, seed=1)
    assert grids["qualified"] == 10 and grids["num_grids"] == 30
    assert not set(grids["sources"].flatten().tolist()) & {7, 9}
    assert torch.equal(labels[grids["sources"]], grids["labels"])
    with pytest.raises(ValueError, match=r"only 10 of 12 images qualified .* 3x3 grid needs 9 classes"):
        build_grids(model, images, labels, grid_size=3)


def reference_focus(maps: torch.Tensor, target_cells: torch.Tensor) -> np.ndarray:
    shares = reference_shares(maps, 2, None)
    return (shares * target_cells.numpy()).sum(1)


def test_focus_mosaics_and_score() -> None:
    labels = torch.arange(30) % 5
    images = class_images(labels)
    mosaics = make_focus_mosaics(images, labels, num_mosaics=60, seed=3)
    assert mosaics["images"].shape == (60, 3, 12, 20)
    assert torch.equal(mosaics["target_cells"], mosaics["labels"] == mosaics["targets"][:, None])
    assert torch.equal(mosaics["target_cells"].sum(1), torch.full((60,), 2))
    for row in range(60):
        others = mosaics["labels"][row][~mosaics["target_cells"][row]]
        assert others[0] != others[1]
        assert len(set(mosaics["sources"][row].tolist())) == 4      # four distinct images
    assert torch.equal(labels[mosaics["sources"]], mosaics["labels"])
    tile = mosaics["images"][0, :, 6:12, 0:10]                      # cell 2: bottom left
    assert torch.equal(tile, images[mosaics["sources"][0, 2]])
    # the score: a transcription on random maps; the oracle scores 1, noise sits at 0.5
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(60, 12, 20, generator=g)
    got = focus(maps, mosaics["target_cells"])
    np.testing.assert_allclose(got["per_image"].numpy(), reference_focus(maps, mosaics["target_cells"]), atol=1e-6)
    oracle = F.interpolate(mosaics["target_cells"].float().reshape(60, 1, 2, 2), size=(12, 20))[:, 0]
    assert torch.equal(focus(oracle, mosaics["target_cells"])["per_image"], torch.ones(60))
    noise = focus(torch.rand(60, 12, 20, generator=g), mosaics["target_cells"])
    assert abs(float(noise["focus"]) - 0.5) < 0.03 and noise["chance"] == 0.5
    with pytest.raises(ValueError, match="target_cells must be a"):
        focus(maps, mosaics["target_cells"].float())


def test_build_focus_mosaics_filters_and_explains_failure() -> None:
    values = torch.tensor([0, 0, 1, 2, 3.5], dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 2, 3])
    images = values[:, None, None, None].expand(-1, 3, 8, 8).contiguous()
    mosaics = build_focus_mosaics(ValueClassifier(), images, labels, num_mosaics=5)
    assert mosaics["qualified"] == 4 and torch.equal(mosaics["targets"], torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="3 of 5 images qualified"):
        build_focus_mosaics(ValueClassifier(), images, torch.tensor([0, 1, 1, 2, 3]), num_mosaics=5)


# --- DiFull / DiPart --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet8() -> nn.Module:
    torch.manual_seed(0)
    model = camzoo.build_model("baseline", "resnet8", num_classes=5, image_size=16)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is not an identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def cell_pixel_masks(cells: torch.Tensor, n: int, size: int) -> torch.Tensor:
    return cell_masks(cells, n, size, size)[:, None].expand(-1, 3, -1, -1)


@pytest.mark.parametrize("n", [2, 3])
def test_difull_disconnection_is_exact_and_dipart_is_not(resnet8: nn.Module, n: int) -> None:
    size = 16 * n
    cells = torch.arange(n * n)
    classes = cells % 5
    images = torch.randn(n * n, 3, size, size, generator=torch.Generator().manual_seed(1))
    inside = cell_pixel_masks(cells, n, size)
    for wrapper_kind in ("difull", "dipart"):
        wrapper = grid_wrapper(wrapper_kind, resnet8, n).eval()
        x = images.clone().requires_grad_(True)
        logits = wrapper(x)
        # image b explains (cell b, class b): images are independent in eval mode, so one backward
        logits.gather(1, wrapper.output_index(cells, classes)[:, None]).sum().backward()
        grad = x.grad
        assert bool((grad[inside] != 0).any())
        if wrapper_kind == "difull":
            assert torch.equal(grad[~inside], torch.zeros_like(grad[~inside]))  # exactly zero
        else:
            assert float(grad[~inside].abs().max()) > 0  # receptive fields cross the cell borders


def test_wrappers_reproduce_the_model_on_cells(resnet8: nn.Module) -> None:
    n, size = 2, 32
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    difull, dipart = DiFull(resnet8, n), DiPart(resnet8, n)
    assert difull(images).shape == (3, 4 * 5) and difull.num_classes == 20
    assert difull.class_names[5 + 2] == "1:2" and difull.pretrained_cfg["input_size"] == (3, 32, 32)
    with torch.no_grad():
        per_cell = difull.cell_logits(images)
        for cell in range(4):
            r, c = divmod(cell, 2)
            expected = resnet8(images[:, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16])
            torch.testing.assert_close(per_cell[:, cell], expected, rtol=1e-5, atol=1e-5)
        feats = resnet8.backbone(images)                        # DiPart: whole-grid features, pooled per block
        pooled = feats[:, :, 4:8, 0:4].mean(dim=(2, 3))         # cell 2 = bottom left
        torch.testing.assert_close(dipart.cell_logits(images)[:, 2], resnet8.fc(pooled), rtol=1e-5, atol=1e-5)
        assert torch.equal(difull(images).reshape(3, 4, 5), per_cell)


@pytest.mark.parametrize("n", [2, 3])
def test_element_wise_methods_stay_inside_the_target_cell_on_difull(resnet8: nn.Module, n: int) -> None:
    size = 16 * n
    wrapper = DiFull(resnet8, n)
    jobs = grid_targets(torch.arange(n * n)[None].repeat(2, 1) % 5)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))[jobs["grid"]]
    targets = wrapper.output_index(jobs["cell"], jobs["target"])
    result = camzoo.explain(wrapper, images, method=["layercam", "hirescam", "gradcam"], target=targets)
    raw_size = result["layercam"].raw.shape[-1]
    assert raw_size == 4 * n
    inside = cell_masks(jobs["cell"], n, raw_size, raw_size)
    for name in ("layercam", "hirescam"):
        raw = result[name].raw
        assert torch.equal(raw[~inside], torch.zeros_like(raw[~inside])), name
        assert bool((raw[inside] > 0).any()), name
        assert torch.equal(grid_pointing_game(raw, jobs["cell"], n)["per_image"][raw.flatten(1).amax(1) > 0],
                           torch.ones(int((raw.flatten(1).amax(1) > 0).sum())))
        upsampled = grid_pointing_game(raw, jobs["cell"], n, size=(size, size))["gridpg"]
        assert 0.8 < float(upsampled) < 1.0  # bilinear upsampling leaks a little across the borders
    # Grad-CAM's channel-mean weights spread attribution into the other cells
    assert float(result["gradcam"].raw[~inside].abs().max()) > 0


def test_oracle_and_random_controls_through_the_wrappers(resnet8: nn.Module) -> None:
    n, size = 2, 32
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(4))
    jobs = grid_targets(torch.tensor([[0, 1, 2, 3]] * 4))
    grids = images[jobs["grid"]]
    for wrapper in (DiFull(resnet8, n), DiPart(resnet8, n)):
        targets = wrapper.output_index(jobs["cell"], jobs["target"])
        oracle = camzoo.explain(wrapper, grids, method="oracle", target=targets,
                                ground_truth={"mask": cell_masks(jobs["cell"], n, size, size)})
        assert torch.equal(grid_pointing_game(oracle.maps, jobs["cell"], n)["per_image"], torch.ones(16))
        random = camzoo.explain(wrapper, grids, method="random", target=targets)
        score = float(grid_pointing_game(random.maps, jobs["cell"], n)["gridpg"])
        assert score == pytest.approx(0.25, abs=1e-6)  # every cell of every grid explained: shares sum to 1


class GapNet(nn.Module):
    """A plain (non-camzoo, non-timm) CNN: conv -> ReLU -> conv -> AdaptiveAvgPool -> Flatten -> Linear."""

    def __init__(self, flatten_head: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1))
        self.pool = nn.Flatten() if flatten_head else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6 * 4 * 4 if flatten_head else 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)))


def test_wrappers_find_the_split_of_other_models() -> None:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    wrapper = DiFull(net, 2, cell_size=64)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(wrapper.cell_logits(x)[:, 3], net(x[:, :, 64:, 64:]), rtol=1e-4, atol=1e-4)
    plain = GapNet().eval()
    wrapped = DiPart(plain, 2, cell_size=8)
    assert wrapped.features.layer == "body"
    assert camzoo.explain(wrapped, torch.randn(2, 3, 16, 16), method="layercam", target=[0, 11]).raw.shape == (2, 8, 8)
    with pytest.raises(ValueError, match="not head\\(global-average-pool\\(features\\)\\)"):
        DiFull(GapNet(flatten_head=True), 2, cell_size=8)
    with pytest.raises(ValueError, match="grid_size must be an int >= 2"):
        DiFull(plain, 1, cell_size=8)
    with pytest.raises(ValueError, match="multiples of grid_size=2"):
        DiFull(plain, 2, cell_size=8)(torch.randn(1, 3, 15, 16))
    with pytest.raises(ValueError, match="not divisible into 2x2 cell blocks"):
        DiPart(plain, 2, cell_size=8)(torch.randn(1, 3, 10, 10))


def test_play_grid_game_scores_one_metric_cell(resnet8: nn.Module) -> None:
    labels = torch.arange(40) % 5
    images = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    grids = make_grids(images, labels, 2, num_grids=6, seed=1)
    for game in ("gridpg", "difull", "dipart"):
        oracle = play_grid_game(resnet8, grids, "oracle", game)
        assert torch.equal(oracle["per_image"], torch.ones(24)) and oracle["chance"] == 0.25
    layercam = play_grid_game(resnet8, grids, "layercam", "difull")
    nonzero = layercam["per_image_raw"] > 0
    assert bool(nonzero.any()) and torch.equal(layercam["per_image_raw"][nonzero], torch.ones(int(nonzero.sum())))
    assert float(layercam["score"]) < float(layercam["score_raw"])   # the upsampling leaks across borders
    corners = play_grid_game(resnet8, grids, lambda net, x, t: torch.rand(x.shape[0], 32, 32), "gridpg", cells=[0, 3])
    assert corners["per_image"].shape == (12,) and corners["score_raw"] is None
    with pytest.raises(ValueError, match="game must be one of"):
        play_grid_game(resnet8, grids, "layercam", "diful")


def test_the_focus_metric_is_a_function_not_shadowed_by_its_module():
    """``camzoo.metrics.focus`` is the metric; the module that builds mosaics has another name."""
    import importlib

    import camzoo.metrics

    assert callable(camzoo.metrics.focus) and camzoo.metrics.focus is focus
    assert importlib.import_module("camzoo.metrics.focus_mosaics").focus is focus
