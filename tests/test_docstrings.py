"""Every public API function documents its parameters and its result (Google style).

Why: users read these functions through ``help()`` and their IDE, not through the source; a docstring
without ``Args:`` / ``Returns:`` leaves them guessing shapes, ranges and what a returned dict holds.
The list is explicit so that a new public function is added here on purpose.
"""

from __future__ import annotations

import inspect
import re

import pytest

import camzoo
import camzoo.bench
import camzoo.data
import camzoo.methods
import camzoo.metrics
import camzoo.models

METRIC_FUNCTIONS = [
    "accuracy", "auc", "average_drop_increase", "best_constant_accuracy", "boxes_to_masks", "build_focus_mosaics",
    "build_grids", "combine_blocks",
    "causal_protocol", "cell_masks", "confident_cells", "deletion_insertion", "energy_pointing_game", "focus",
    "grid_pointing_game", "grid_targets", "grid_wrapper", "lfi_script_maps", "linear_imputation",
    "make_focus_mosaics", "make_grids", "max_box_acc", "max_box_acc_from_hits", "morf_lerf", "object_share", "pairwise_stability",
    "parameter_randomisation", "pearson", "play_grid_game", "pointing_game", "pointing_game_class_mean", "pxap",
    "pxap_from_histograms", "random_logit_similarity", "randomisable_layers", "randomisation_spearman",
    "register_metric", "relevance_rank_accuracy", "rise_blur", "rise_blur_kernel", "road_impute", "saliency_rank",
    "score_maps", "score_parts", "shortcut_share", "spearman", "ssim", "stability", "substrate_agreement", "table_columns",
]

OTHER_FUNCTIONS = {
    "camzoo.explain": camzoo.explain,
    "camzoo.list_methods": camzoo.list_methods,
    "camzoo.build_model": camzoo.build_model,
    "camzoo.bench.load": camzoo.bench.load,
    "camzoo.methods.register": camzoo.methods.register,
    "camzoo.models.register_kind": camzoo.models.register_kind,
    "camzoo.data.register_dataset": camzoo.data.register_dataset,
}

PUBLIC = {**{f"camzoo.metrics.{name}": getattr(camzoo.metrics, name) for name in METRIC_FUNCTIONS},
          **OTHER_FUNCTIONS}


def test_the_metric_list_matches_all():
    """A function added to ``camzoo.metrics.__all__`` must be added to METRIC_FUNCTIONS (and documented)."""
    exported = {name for name in camzoo.metrics.__all__ if inspect.isfunction(getattr(camzoo.metrics, name))}
    assert set(METRIC_FUNCTIONS) <= exported, sorted(set(METRIC_FUNCTIONS) - exported)
    unlisted = exported - set(METRIC_FUNCTIONS)
    assert not unlisted, f"add {sorted(unlisted)} to METRIC_FUNCTIONS (with Args:/Returns: in their docstrings)"


def _parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name not in ("self", "cls")]


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_function_has_args_and_returns(name: str) -> None:
    function = PUBLIC[name]
    doc = inspect.getdoc(function) or ""
    assert doc.strip(), f"{name} has no docstring"
    assert "Returns:" in doc, f"{name}'s docstring has no Returns: section"
    parameters = _parameters(function)
    if parameters:
        assert "Args:" in doc, f"{name}'s docstring has no Args: section"
        args = doc.split("Args:", 1)[1]
        missing = [p for p in parameters if not re.search(rf"\b{re.escape(p)}\b", args)]
        assert not missing, f"{name}'s Args: section does not describe {missing}"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_lines_fit(name: str) -> None:
    source = inspect.getsource(PUBLIC[name])
    doc = PUBLIC[name].__doc__ or ""
    too_long = [line for line in doc.splitlines() if len(line) > 120]
    assert not too_long, f"{name}: docstring lines over 120 characters: {too_long}"
    assert doc.splitlines()[0] in source  # the docstring is the function's own, not inherited
