"""camzoo.metrics: tensors in, tensors/dicts out, on the inputs' device.

Accuracy, causal metrics (deletion/insertion, Average Drop / Increase in Confidence), localization
(pointing game, energy pointing game, relevance rank accuracy, MaxBoxAccV1/V2, PxAP), cross-seed
stability (IoU, Dice, Spearman, Pearson, SSIM) and the parameter-randomisation sanity check.
``METRICS`` (:mod:`camzoo.metrics.table`) says, for every reported number, which direction is better,
its range, what it needs and how a benchmark cell computes it; ``score_maps`` and the report's
columns are generated from it. Protocols: docs/metrics.md.
"""

from __future__ import annotations

from ._checks import boxes_to_masks
from .causal import (
    PROTOCOLS,
    RISE_PROTOCOL,
    CausalProtocol,
    auc,
    causal_protocol,
    deletion_insertion,
    rise_blur,
    rise_blur_kernel,
    saliency_rank,
)
from .confidence import average_drop_increase
from .classification import accuracy
from .faithfulness import SUBSTRATES, morf_lerf, substrate_agreement
from .imputation import linear_imputation, road_impute
from .localization import (
    ENERGY_VARIANTS,
    energy_pointing_game,
    pointing_game,
    pointing_game_class_mean,
    pxap,
    pxap_from_histograms,
    relevance_rank_accuracy,
)
from .wsol import max_box_acc, max_box_acc_from_hits
from .objects import object_share
from .parts import PartsSet, score_parts
from .shortcuts import best_constant_accuracy, shortcut_share
from .sanity import parameter_randomisation, randomisable_layers
from .stability import lfi_script_maps, pairwise_stability, pearson, spearman, ssim, stability
from .settings import GRID_GAMES, SENSITIVITY_TESTS, EvalSettings
from .scoring import combine_blocks, score_maps
from .table import METRICS, MetricInfo, ScoringContext, register_metric, table_columns
from . import parts_table  # noqa: F401  (registers the FunnyBirds protocol's metrics after the main table's)
from .context import MethodSpec
from .grids import build_grids, cell_masks, confident_cells, grid_pointing_game, grid_targets, make_grids
from .focus_mosaics import build_focus_mosaics, focus, make_focus_mosaics
from .grid_models import DiFull, DiPart, grid_wrapper, play_grid_game
from .class_sensitivity import random_logit_similarity, randomisation_spearman


__all__ = [
    "SUBSTRATES",
    "linear_imputation",
    "morf_lerf",
    "road_impute",
    "substrate_agreement",
    "ENERGY_VARIANTS",
    "PROTOCOLS",
    "RISE_PROTOCOL",
    "CausalProtocol",
    "causal_protocol",
    "pointing_game_class_mean",
    "METRICS",
    "EvalSettings",
    "MetricInfo",
    "ScoringContext",
    "accuracy",
    "object_share",
    "best_constant_accuracy",
    "shortcut_share",
    "auc",
    "average_drop_increase",
    "boxes_to_masks",
    "deletion_insertion",
    "energy_pointing_game",
    "max_box_acc",
    "max_box_acc_from_hits",
    "lfi_script_maps",
    "pairwise_stability",
    "parameter_randomisation",
    "pearson",
    "pointing_game",
    "pxap",
    "pxap_from_histograms",
    "randomisable_layers",
    "register_metric",
    "relevance_rank_accuracy",
    "rise_blur",
    "rise_blur_kernel",
    "saliency_rank",
    "score_maps",
    "combine_blocks",
    "spearman",
    "ssim",
    "stability",
    "table_columns",
    "GRID_GAMES",
    "SENSITIVITY_TESTS",
    "MethodSpec",
    "PartsSet",
    "score_parts",
    "build_focus_mosaics",
    "build_grids",
    "cell_masks",
    "confident_cells",
    "focus",
    "grid_pointing_game",
    "grid_targets",
    "make_focus_mosaics",
    "make_grids",
    "play_grid_game",
    "DiFull",
    "DiPart",
    "grid_wrapper",
    "random_logit_similarity",
    "randomisation_spearman",
]
