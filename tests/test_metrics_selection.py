"""Metric selection is declared in the metrics table: ``MetricInfo.selected_by`` says which settings list
asks for a metric, the names those lists accept (GRID_GAMES, SENSITIVITY_TESTS) are read from the
table, and ``score_maps`` computes only what the settings ask for. A new grid game or test is one
registration; the pixel games' digest is computed once per cell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import camzoo.metrics
from camzoo.metrics import (GRID_GAMES, METRICS, SENSITIVITY_TESTS, SUBSTRATES, EvalSettings, MetricInfo,
                            register_metric, score_maps)
from camzoo.metrics import causal
from camzoo.metrics.selection import choices
from camzoo.metrics.settings import SettingsError


class Counted:
    """A dummy metric's compute that counts its calls (to show a skipped metric is never computed)."""

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def __call__(self, ctx) -> tuple[float, None]:
        self.calls += 1
        return self.value, None


@pytest.fixture
def dummies() -> Iterator[dict[str, Counted]]:
    """A dummy grid game and a dummy sensitivity test, each one registration, removed afterwards."""
    computes = {"dummy_game_2x2": Counted(0.25), "dummy_test": Counted(0.5)}
    for name, field in (("dummy_game_2x2", "grid_games"), ("dummy_test", "sensitivity")):
        register_metric(MetricInfo(name, True, 0, 1, "", f"a test's dummy ({field})", needs=("method",),
                                   group="discrimination", reads="inputs", selected_by=field, compute=computes[name]))
    try:
        yield computes
    finally:
        for name in computes:
            METRICS.remove(name)


def tiny_cell() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    images = torch.randn(6, 3, 8, 8)
    return model, images, torch.rand(6, 8, 8), torch.arange(6) % 3


def test_the_selectable_names_are_the_tables_declarations():
    declared = {field: [info.selected_as or info.name for info in METRICS.values() if info.selected_by == field]
                for field in ("grid_games", "sensitivity", "substrates")}
    assert tuple(GRID_GAMES) == tuple(declared["grid_games"]) == ("gridpg_2x2", "gridpg_3x3", "difull_2x2",
                                                                  "dipart_2x2", "focus")
    assert set(SENSITIVITY_TESTS) == set(declared["sensitivity"]) == {"randomisation_spearman",
                                                                      "random_logit_similarity"}
    assert choices("substrates") == tuple(SUBSTRATES)  # the SRG entries, one per substrate
    assert camzoo.metrics.GRID_GAMES is GRID_GAMES and GRID_GAMES == tuple(GRID_GAMES)
    assert "focus" in GRID_GAMES and "focus" not in SENSITIVITY_TESTS and len(SENSITIVITY_TESTS) == 2
    for name in [*GRID_GAMES, *SENSITIVITY_TESTS]:
        assert METRICS[name].group == "discrimination" and "method" in METRICS[name].needs


def test_a_registered_grid_game_and_test_are_selectable_and_scored(dummies):
    assert "dummy_game_2x2" in GRID_GAMES and "dummy_test" in SENSITIVITY_TESTS
    assert "dummy_game_2x2" in camzoo.metrics.settings.GRID_GAMES
    settings = EvalSettings(deletion_steps=2, substrates=(), grid_games=("dummy_game_2x2",), grid_count=2,
                            sensitivity=("dummy_test",))
    model, images, maps, labels = tiny_cell()
    scores = score_maps(model, images, maps, labels, None, None, settings, method="random")
    assert scores["dummy_game_2x2"] == (0.25, None) and scores["dummy_test"] == (0.5, None)
    # the grids' counts follow the games by their size: a 2x2 game asks for grid_count_2x2, not 3x3
    assert "grid_count_2x2" in scores and "grid_qualified" in scores and "grid_count_3x3" not in scores
    assert not {"gridpg_2x2", "focus", "random_logit_similarity"} & set(scores)  # registered, not asked for
    calls = {name: compute.calls for name, compute in dummies.items()}
    unasked = score_maps(model, images, maps, labels, None, None, EvalSettings(deletion_steps=2, substrates=()),
                         method="random")
    assert not {"dummy_game_2x2", "dummy_test", "grid_qualified", "grid_count_2x2"} & set(unasked)
    assert {name: compute.calls for name, compute in dummies.items()} == calls  # skipped, never computed


def test_an_unregistered_name_is_refused_after_removal(dummies):
    EvalSettings(grid_games=("dummy_game_2x2",))
    METRICS.remove("dummy_game_2x2")
    try:
        assert "dummy_game_2x2" not in GRID_GAMES
        with pytest.raises(SettingsError, match="eval.grid_games"):
            EvalSettings(grid_games=("dummy_game_2x2",))
    finally:
        register_metric(MetricInfo("dummy_game_2x2", True, 0, 1, "", "re-added for the fixture's teardown"))


def test_register_metric_checks_the_declaration():
    with pytest.raises(ValueError, match="selected_by"):
        register_metric(MetricInfo("bad_selector", True, 0, 1, "", "", selected_by="grid_game"))
    with pytest.raises(ValueError, match="selected_as"):
        register_metric(MetricInfo("bad_selected_as", True, 0, 1, "", "", selected_as="x"))
    assert "bad_selector" not in METRICS and "bad_selected_as" not in METRICS
    chosen = MetricInfo("any", True, 0, 1, "", "", selected_by=lambda s: s.deletion_steps > 3)
    assert chosen.selected(EvalSettings(deletion_steps=4)) and not chosen.selected(EvalSettings(deletion_steps=3))
    srg = METRICS["srg_blur"]
    assert srg.selected(EvalSettings(substrates=("blur",))) and not srg.selected(EvalSettings(substrates=("zeros",)))


def test_the_game_digest_is_computed_once_per_cell(monkeypatch):
    """Deletion, insertion, their curves and every SRG substrate read one digest per ordering: a cell
    whose games are memoised ranks its maps' pixels once per ordering (MoRF, LeRF), not once per metric."""
    model, images, maps, labels = tiny_cell()
    settings = EvalSettings(deletion_steps=3, deletion_fraction=0.5, substrates=("zeros", "blur"), chunk_size=8)
    memo: dict = {}
    first = score_maps(model, images, maps, labels, None, None, settings, model_memo=memo)
    ranked: list[bool] = []
    original = causal.saliency_rank

    def counting(scores: torch.Tensor) -> torch.Tensor:
        ranked.append(True)
        return original(scores)

    monkeypatch.setattr(causal, "saliency_rank", counting)
    again = score_maps(model, images, maps.clone(), labels, None, None, settings, model_memo=memo)
    assert len(ranked) == 2  # the games came from the model's memo: only the digest ranked, once per order
    for name in ("deletion", "insertion", "srg_zeros", "srg_blur"):
        assert again[name][0] == first[name][0]
