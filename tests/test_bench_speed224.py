"""Own models at real image sizes: forwards sized by bytes, cells committed as each method finishes.

A chunk in bytes must give the very rows the same chunk in images gave (the numbers do not depend on
how they were chunked: the auto budget leaves small images at the old 64 per forward); a run stopped
after its first method keeps that method's cell; ROAD's sparse solve agrees with the conjugate
gradient it replaces on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from camzoo.bench import scoring
from camzoo.bench.config import resolve_config
from camzoo.bench.plan import build_plan
from camzoo.bench.runner import BenchRunner
from camzoo.bench.store import ResultsStore
from camzoo.metrics import EvalSettings, score_maps
from camzoo.metrics.imputation import linear_imputation
from camzoo.metrics.settings import CPU_CHUNK_MB
from helpers import quadrant_batch, write_folder

GAMES = {"deletion_steps": 4, "deletion_fraction": 0.5, "substrates": ("zeros", "blur", "road"),
         "sensitivity": ("random_logit_similarity",), "grid_threshold": 0.0, "grid_count": 2}


class ColourNet(torch.nn.Module):
    """The class is the colour of an image's square (a 1x1 convolution per class colour, pooled), so a
    handful of images fills 2x2 grids of distinct, confident classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [-1, -1, -1]])[:, :, None, None])
            self.conv.bias.fill_(0.5)
        self.fc = torch.nn.Linear(4, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(4) * 40)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def rows(settings: EvalSettings, batches: list[int] | None = None) -> dict:
    """Every metric of one Grad-CAM cell on 8 images of 16 px: the games, average drop, ROAD, random
    logit and the 2x2 grid game all forward chunks (``batches`` collects each forward's batch size)."""
    labels = torch.arange(8) % 4
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [-1, -1, -1]])[labels]
    noise = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 0.1
    images = noise.clone()
    images[:, :, 4:12, 3:11] = colours[:, :, None, None] + noise[:, :, 4:12, 3:11]
    masks = torch.zeros(8, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 3:11] = True
    maps = torch.nn.functional.interpolate(torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1)),
                                           size=(16, 16), mode="bilinear")[:, 0]
    model = ColourNet().eval()
    if batches is not None:
        model.register_forward_pre_hook(lambda _module, args: batches.append(args[0].shape[0]))
    return score_maps(model, images, maps, labels, masks, None, settings, map_memo={}, model_memo={},
                      method="gradcam")


def assert_same_rows(a: dict, b: dict) -> None:
    assert set(a) == set(b) and len(a) > 10
    for name in a:
        assert a[name][0] == b[name][0] or (np.isnan(a[name][0]) and np.isnan(b[name][0])), name
        if a[name][1] is not None:
            np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)


def test_a_chunk_in_bytes_gives_the_rows_of_the_same_chunk_in_images():
    """3 images' worth of MiB per forward plays exactly what chunk_size = 3 played; at small sizes the
    auto budget is the old default of 64 inputs per forward, so a small run's numbers are unchanged."""
    grids = ("gridpg_2x2",)
    one = 3 * 16 * 16 * 4  # bytes of one 16 px input
    seen: dict[str, list[int]] = {"images": [], "bytes": [], "old": [], "auto": []}
    by_images = rows(EvalSettings(chunk_size=3, chunk_mb=1024.0, **GAMES), seen["images"])
    by_bytes = rows(EvalSettings(chunk_size=64, chunk_mb=3 * one / 2 ** 20, **GAMES), seen["bytes"])
    assert_same_rows(by_images, by_bytes)
    assert seen["bytes"] == seen["images"] and max(seen["bytes"]) == 3  # the very same forwards
    # a 2x2 grid is 4 inputs' bytes: fewer grids per forward, the same numbers
    with_grids = [rows(EvalSettings(chunk_size=3, chunk_mb=1024.0, grid_games=grids, **GAMES)),
                  rows(EvalSettings(chunk_size=64, chunk_mb=3 * one / 2 ** 20, grid_games=grids, **GAMES))]
    assert_same_rows(*with_grids)
    assert with_grids[0]["grid_count_2x2"][0] > 0
    old_default = rows(EvalSettings(chunk_size=64, chunk_mb=1024.0, grid_games=grids, **GAMES), seen["old"])
    assert_same_rows(rows(EvalSettings(grid_games=grids, **GAMES), seen["auto"]), old_default)
    assert seen["auto"] == seen["old"] and max(seen["old"]) > 3


def test_the_auto_budget_caps_a_cpu_forward_at_224_px_and_leaves_a_gpu_alone():
    settings = EvalSettings()
    at_224 = torch.empty(2, 3, 224, 224)
    assert settings.chunk_for(at_224) == int(CPU_CHUNK_MB * 2 ** 20 // (3 * 224 * 224 * 4)) < settings.chunk_size
    assert settings.chunk_for(at_224, scale=4) < settings.chunk_for(at_224)  # a 2x2 grid of them
    assert settings.chunk_for(torch.empty(2, 3, 32, 32)) == settings.chunk_size
    assert settings.chunk_for(torch.empty(2, 3, 2048, 2048)) == 1  # never none
    assert settings.chunk_for(torch.empty(2, 3, 224, 224, device="meta")) == settings.chunk_size  # not a CPU
    assert EvalSettings(chunk_mb=1000).chunk_for(at_224) == settings.chunk_size
    assert EvalSettings.from_config({"chunk_mb": "auto"}).chunk_mb == "auto"
    with pytest.raises(ValueError, match=r"eval\.chunk_mb must be a positive number of MiB or \"auto\""):
        EvalSettings(chunk_mb=0)
    with pytest.raises(ValueError, match=r"eval\.chunk_mb"):
        EvalSettings(chunk_mb="big")


def config(tmp_path: Path) -> dict:
    """One resnet10t checkpoint on a 4-class annotated folder at 32 px, three method groups."""
    folder = write_folder(tmp_path / "photos", per_class=2, side=32)
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=4).state_dict(), tmp_path / "a.pth")
    return resolve_config(None, overrides={
        "methods": ["gradcam", "random", "centre"], "device": "cpu",
        "models": [{"name": "resnet10t", "checkpoints": [str(tmp_path / "a.pth")]}],
        "datasets": [{"name": "annotated", "root": str(folder), "image_size": 32, "options": {}}],
        "eval": {"images": 8, "batch_size": 8, "deletion_steps": 2, "substrates": [], "grid_games": [],
                 "sensitivity": [], "gallery_images": 1}})


class Stop(Exception):
    """Raised in place of a Ctrl-C once the first method cell is in the store."""


def test_a_run_stopped_after_its_first_method_keeps_that_cell(tmp_path: Path, monkeypatch):
    plan = build_plan(config(tmp_path))
    assert len(plan.jobs[0].groups) == 3  # the methods are explained and scored group by group
    written, explained = [], []
    original, explain = ResultsStore.write_cell, scoring.explain_block

    def write_then_stop(self, run_id, key, *args, **kwargs):
        original(self, run_id, key, *args, **kwargs)
        written.append(key.method)
        if key.method not in ("gallery", "model"):
            raise Stop

    monkeypatch.setattr(ResultsStore, "write_cell", write_then_stop)
    monkeypatch.setattr(scoring, "explain_block", lambda model, block, group, *a, **k: (
        explained.append(list(group)), explain(model, block, group, *a, **k))[1])
    with pytest.raises(Stop):
        BenchRunner(plan, tmp_path / "out", progress=False, echo=lambda _: None).run()
    first = written[-1]
    assert explained == [[first]]  # committed before the next group was explained
    with ResultsStore(tmp_path / "out") as store:
        kept = {key.method for key in store.cells(plan.run_id)}
    assert kept == {"gallery", "model", first}
    # the rerun resumes: the kept cell is not computed again, the others are
    monkeypatch.setattr(ResultsStore, "write_cell", lambda self, run_id, key, *a, **k: (
        written.append(key.method), original(self, run_id, key, *a, **k)))
    written.clear()
    BenchRunner(plan, tmp_path / "out", progress=False, echo=lambda _: None).run()
    assert first not in written and set(written) >= {"gradcam", "random", "centre"} - {first}


def test_the_bar_counts_cells_and_names_each_step(tmp_path: Path, capsys):
    plan = build_plan(config(tmp_path))
    BenchRunner(plan, tmp_path / "out", progress=True, echo=lambda _: None).run()
    shown = capsys.readouterr().err
    cells = len(plan.jobs[0].cell_keys)
    assert f"{cells}/{cells}" in shown and "cell" in shown
    assert "scoring gradcam" in shown and "explaining" in shown


def test_each_method_is_handed_over_as_soon_as_it_is_scored_on_the_last_block(tmp_path: Path):
    """score_model yields a method's cell right after scoring it on the last block, before the next
    method of its one-pass group is scored; on an earlier block, never."""
    from camzoo.batchnorm_folding import fold_batchnorm
    from camzoo.bench.evaluation import EvalSet
    from camzoo.bench.scoring import score_model

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    images, labels, masks = quadrant_batch(6, size=32, seed=2)
    blocks = [EvalSet(images[i:i + 3], labels[i:i + 3], masks[i:i + 3], None, (0.0,) * 3, (1.0,) * 3,
                      ["a", "b", "c", "d"], start=i) for i in (0, 3)]
    settings = EvalSettings(deletion_steps=2, substrates=())
    events: list[str] = []
    cells = score_model(model, fold_batchnorm(model), iter(blocks), [["gradcam", "layercam"], ["eigencam"]],
                        lambda _m: settings, layers={}, reshape=None, batch_size=3, device=torch.device("cpu"),
                        keep_maps=6, last_start=3, progress=events.append)
    method, cell, _arrays = next(cells)
    assert method == "gradcam" and cell["deletion"][1].shape == (6,)  # both blocks joined
    assert events.count("explaining gradcam, layercam") == 2  # the last block's pass is done ...
    assert events.count("scoring layercam") == 1 and events.count("explaining eigencam") == 1  # ... the rest not
    rest = list(cells)
    assert [m for m, _, _ in rest] == ["layercam", "eigencam"] and events.count("explaining eigencam") == 2
    assert all(cell["deletion"][1].shape == (6,) for _, cell, _ in rest)


def test_roads_sparse_solve_agrees_with_the_conjugate_gradient():
    """Holes above the dense solver's size on the CPU go to one sparse LU each: the CG's answer to
    its tolerance; known pixels untouched; a fully removed image its mean."""
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(3, 3, 40, 40, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    removed = torch.stack([(yy - 20) ** 2 + (xx - 18) ** 2 < 12 ** 2,  # one blob of ~450 pixels
                           torch.rand(40, 40, generator=generator) < 0.4,  # scattered, ~640
                           torch.ones(40, 40, dtype=torch.bool)])  # everything
    sparse = linear_imputation(images, removed, solver="sparse")
    cg = linear_imputation(images.double(), removed, solver="cg", tol=1e-12)
    assert int(removed[0].sum()) > 256  # past the dense solver
    torch.testing.assert_close(sparse.double(), cg, atol=1e-5, rtol=0)
    assert torch.equal(linear_imputation(images, removed), sparse)  # auto on a CPU
    keep = ~removed[:, None].expand_as(images)
    assert torch.equal(sparse[keep], images[keep])
    with pytest.raises(ValueError, match="solver must be one of"):
        linear_imputation(images, removed, solver="lu")


def test_auto_takes_the_sparse_solve_on_a_cpu_and_cg_is_there_on_request(monkeypatch):
    """auto: the sparse LU for CPU tensors (a GPU keeps the batched CG); solver="cg" forces the CG."""
    from camzoo.metrics import imputation

    calls = []
    monkeypatch.setattr(imputation, "_sparse_solve", lambda *a: calls.append("sparse") or torch.zeros_like(a[0]))
    monkeypatch.setattr(imputation, "_conjugate_gradient", lambda known, *a: calls.append("cg") or known.clone())
    images = torch.randn(1, 3, 24, 24)
    removed = torch.zeros(1, 24, 24, dtype=torch.bool)
    removed[0, 2:22, 2:22] = True  # 400 pixels
    imputation.linear_imputation(images, removed)
    imputation.linear_imputation(images, removed, solver="cg")
    assert calls == ["sparse", "cg"]
