"""A reliability card for every metric column: whether a table's column deserves to rank the methods.

Why: a column is only as good as the question it answers. On the quick preset a constant map wins
the stability columns and MaxBoxAccV2, deletion separates the methods from ``random`` but not from
each other, and an average over such columns ranked a class-agnostic Eigen-CAM second. Each card
measures its column with the statistics of psychometrics (Tomsett et al., AAAI 2020) and of
MetaQuantus (Hedström et al., TMLR 2023), from the per-image values the store already holds:

- a. control checks: the share of images where ``oracle`` beats ``random``; ``control_wins``: the
  trivial controls (``random``, ``centre``, ``edges``) whose mean is at least as good as the best method's;
- b. separation: significance groups among the method rows, share of method pairs separated;
- c. inter-rater reliability: Krippendorff's α (ordinal) of the per-image rankings of the methods
  (images as raters), with a bootstrap CI over images;
- d. inter-method reliability: the mean Spearman correlation between methods across images;
- e. internal consistency: Cronbach's α over the column's items (curve steps, SRG substrates,
  MaxBoxAcc's IoU thresholds), the mean over method rows;
- f. test–retest: ICC(2,1) of per-image values between training seeds, the mean over method rows;
- g. MetaQuantus' noise resilience and adversarial reactivity (``eval.reliability = "full"`` only):
  IAC_NR, IAC_AR, IEC_NR, IEC_AR and their mean MC, over the input and model perturbations;
- h. ground-truth validity: Kendall's τ between the column's ranking of the methods and DiFull's
  (the one ranking whose truth is exact by construction), with a bootstrap CI;
- i. cost: seconds per image of the metric's own computation (where the run recorded it).

A card's verdict is ``rank`` or ``report`` (camzoo.bench.leaderboard ranks only on ``rank``), with the
reason in words; the rules' thresholds are ``EvalSettings`` fields (docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..metrics.settings import SENSITIVITY_TESTS, EvalSettings
from . import metaquantus
from . import psychometrics as psy
from .cells import Column, is_reference, paired_vector, table_columns
from .record import RunRecord
from .store import ResultsStore

RANKED_SCOPES = ("map", "stability")  # metrics of the maps; "model" (accuracy) and "cost" rank no method
GROUND_TRUTH = "difull_2x2"  # the ranking whose truth is exact by construction (docs/metrics.md)
CI_RESAMPLES = 1000
PERTURBATIONS = ("input", "model")
CARD_COLUMNS = ["dataset", "backbone", "metric", "column", "higher_is_better", "verdict", "reason", "methods",
                "images", "oracle_beats_random", "control_wins", "groups", "separated_share", "alpha", "alpha_ci_low",
                "alpha_ci_high", "inter_method", "cronbach_alpha", "icc", "iac_nr", "iac_ar", "iec_nr", "iec_ar",
                "mc", "mc_input", "mc_model", "tau_difull", "tau_ci_low", "tau_ci_high", "seconds_per_image"]


def reliability_cards(frame: pd.DataFrame, pairwise: pd.DataFrame,
                      groups: Mapping[tuple[str, str], tuple[dict, dict, pd.DataFrame]],
                      record: RunRecord, store: ResultsStore) -> pd.DataFrame:
    """reliability.csv: one card per (dataset, backbone, metric) of the columns that could rank methods.

    ``groups``: (dataset, backbone) -> (metric -> {(kind, method): the summary's cell}, metric -> {"kind/method":
    the method row's paired vector, as the summary's tests compared it}, the store's rows of the pair with
    their per-image values); ``frame``/``pairwise``: the summary and its tests; ``record``: the run (settings)."""
    columns = {c.metric: c for c in table_columns()}
    cards = []
    for (dataset, backbone), (cells_by_column, vectors_by_column, rows) in groups.items():
        summary = frame[(frame["dataset"] == dataset) & (frame["backbone"] == backbone)]
        tests = pairwise[(pairwise["dataset"] == dataset) & (pairwise["backbone"] == backbone)] if not pairwise.empty \
            else pairwise
        context = _Group(cells_by_column, vectors_by_column, rows, columns, record, store, dataset, backbone)
        for metric, found in cells_by_column.items():
            column = columns[metric]
            if _scope(metric) not in RANKED_SCOPES or f"{metric}_mean" not in summary or summary[f"{metric}_mean"].isna().all():
                continue
            card = {"dataset": dataset, "backbone": backbone, "metric": metric, "column": column.header,
                    "higher_is_better": column.higher_is_better}
            card.update(context.card(column, found, summary, tests))
            card.update(verdict(card, record.settings))
            cards.append(card)
    return pd.DataFrame(cards, columns=CARD_COLUMNS)


def trivial_controls() -> list[str]:
    """The controls that read neither the model's evidence nor the ground truth (random, centre, edges):
    the registry's reference methods without ``needs_ground_truth``."""
    from ..methods import get_method, reference_method_names

    return [name for name in reference_method_names() if not get_method(name).needs_ground_truth]


def _scope(metric: str) -> str:
    from ..metrics import METRICS

    return METRICS[metric].scope


def verdict(card: Mapping[str, Any], settings: EvalSettings) -> dict[str, str]:
    """``rank`` when the column passes every rule, else ``report``; the reason in words either way."""
    failed = []
    if card["methods"] < 2 or card["images"] < 2:
        failed.append("fewer than two method rows with per-image values: nothing to compare")
    if card["control_wins"]:
        failed.append(f"a trivial control ({card['control_wins']}) scores at least as well as every method")
    if card["separated_share"] == 0:
        failed.append("separates no method from another (one significance group)")
    alpha = card["alpha"]
    if alpha == alpha and alpha < settings.min_alpha:
        failed.append(f"α = {alpha:.2f} [{card['alpha_ci_low']:.2f}, {card['alpha_ci_high']:.2f}] < "
                      f"{settings.min_alpha:g}: the images disagree on the order of the methods")
    share = card["oracle_beats_random"]
    if share == share and share < settings.min_oracle_share:
        failed.append(f"the oracle beats random on only {share:.0%} of the images")
    if failed:
        return {"verdict": "report", "reason": "; ".join(failed)}
    parts = [f"no control wins; {_count(card['groups'], 'significance group')}",
             f"α = {alpha:.2f} [{card['alpha_ci_low']:.2f}, {card['alpha_ci_high']:.2f}]" if alpha == alpha else ""]
    if share == share:
        parts.append(f"the oracle beats random on {share:.0%} of the images")
    return {"verdict": "rank", "reason": "; ".join(p for p in parts if p)}


def _count(value: float, noun: str) -> str:
    if value != value:
        return f"pairs separated (no {noun}s: one model per kind)"
    return f"{int(value)} {noun}{'' if value == 1 else 's'}"


class _Group:
    """The cells of one (dataset, backbone), and how each card field reads them."""

    def __init__(self, cells_by_column: dict, vectors_by_column: dict, rows: pd.DataFrame, columns: Mapping[str, Any],
                 record: RunRecord, store: ResultsStore, dataset: str, backbone: str) -> None:
        self.cells_by_column, self.vectors_by_column = cells_by_column, vectors_by_column
        self.rows, self.columns = rows, columns
        self.settings, self.store, self.run_id = record.settings, store, record.run_id
        self.dataset, self.backbone = dataset, backbone
        self._seconds: dict[str, list[float]] | None = None  # metric -> seconds per image of each method cell
        self._grouped: dict[tuple[str, str, str], pd.DataFrame] | None = None  # see _cell_rows

    # --- the per-image table of a column: images x method rows ---------------------------------------
    def vectors(self, metric: str) -> dict[str, np.ndarray]:
        """Method row ("kind/method") -> its per-image test vector (averaged over seeds), where it has one:
        the summary's, from its paired tests."""
        vectors = self.vectors_by_column.get(metric, {})
        if len({v.shape for v in vectors.values()}) > 1:  # rows on different images cannot be ranked per image
            return {}
        return vectors

    def card(self, column: Column, found: Mapping[tuple[str, str], Any], summary: pd.DataFrame,
             tests: pd.DataFrame) -> dict[str, Any]:
        vectors = self.vectors(column.metric)
        table = np.stack(list(vectors.values()), axis=1) if vectors else np.empty((0, 0))
        card: dict[str, Any] = {"methods": table.shape[1], "images": table.shape[0]}
        card.update(self.controls(column, found, summary))
        card.update(self.separation(column, summary, tests))
        card.update(_agreement(table, column.higher_is_better))
        card["cronbach_alpha"] = self.internal_consistency(column, vectors)
        card["icc"] = self.test_retest(column, found)
        card.update(self.meta_consistency(column, found))
        card.update(self.validity(column, vectors))
        card["seconds_per_image"] = self.cost(column)
        return card

    # --- a. controls ----------------------------------------------------------------------------------
    def controls(self, column: Column, found: Mapping[tuple[str, str], Any], summary: pd.DataFrame) -> dict[str, Any]:
        higher = column.higher_is_better
        shares = []
        # the oracle's map is the object's mask whatever the class or the weights: no ceiling of a
        # class-sensitivity test (its Random Logit similarity is 1, as for any class-agnostic map)
        kinds = [] if column.metric in SENSITIVITY_TESTS else sorted({kind for kind, _ in found})
        for kind in kinds:
            random_cell, oracle_cell = found.get((kind, "random")), found.get((kind, "oracle"))
            if random_cell is None or oracle_cell is None:
                continue
            random_vector, oracle_vector = paired_vector(random_cell, column), paired_vector(oracle_cell, column)
            if random_vector is None or oracle_vector is None or random_vector.shape != oracle_vector.shape:
                continue
            keep = ~(np.isnan(random_vector) | np.isnan(oracle_vector))
            better = oracle_vector[keep] > random_vector[keep] if higher else oracle_vector[keep] < random_vector[keep]
            if better.size:
                shares.append(float(better.mean()))
        means = summary.set_index("method")[f"{column.metric}_mean"]
        reference = summary.set_index("method")["reference"].astype(bool)
        methods = means[~reference].dropna()
        wins = []
        if not methods.empty:
            best = methods.max() if higher else methods.min()
            for control in trivial_controls():
                values = means[means.index == control].dropna()
                if not values.empty and ((values.max() >= best) if higher else (values.min() <= best)):
                    wins.append(f"{control} {(values.max() if higher else values.min()):.3f} vs best method {best:.3f}")
        return {"oracle_beats_random": float(np.mean(shares)) if shares else math.nan, "control_wins": "; ".join(wins)}

    # --- b. separation --------------------------------------------------------------------------------
    def separation(self, column: Column, summary: pd.DataFrame, tests: pd.DataFrame) -> dict[str, Any]:
        letters = summary.loc[~summary["reference"].astype(bool), f"{column.metric}_group"] \
            if f"{column.metric}_group" in summary else pd.Series(dtype=object)
        letters = [v for v in letters if isinstance(v, str)]
        groups = float(len(set("".join(letters)))) if letters else math.nan
        mine = tests[tests["metric"] == column.metric] if not tests.empty else tests
        share = float(mine["significant"].astype(bool).mean()) if len(mine) else math.nan
        return {"groups": groups, "separated_share": share}

    # --- e. internal consistency -----------------------------------------------------------------------
    def _items(self, column: Column, label: str) -> np.ndarray | None:
        """(images, items) of one method row, averaged over seeds: what Cronbach's α reads."""
        kind, method = label.split("/", 1)
        metric = column.metric
        if metric in ("deletion", "insertion"):
            return self._seed_mean(kind, method, f"{metric}_curve")
        if metric.startswith("srg_"):
            substrates = [self._seed_mean(kind, method, name) for name in self.cells_by_column if name.startswith("srg_")]
            substrates = [s for s in substrates if s is not None]
            if len(substrates) < 2 or len({s.shape for s in substrates}) != 1:
                return None
            return np.stack(substrates, axis=1)
        if metric == "max_box_acc_v2":
            tables = self._per_seed(kind, method, metric)  # (S, N, IoU thresholds, CAM thresholds)
            if tables is None or tables.ndim != 4:
                return None
            best = tables.mean(1).argmax(-1)  # (S, IoU thresholds): each model's best CAM threshold
            hits = np.take_along_axis(tables, best[:, None, :, None], axis=3)[..., 0]  # (S, N, I)
            return hits.mean(0)
        return None

    def _cell_rows(self, kind: str, method: str, metric: str) -> pd.DataFrame | None:
        """The store's rows of one (kind, method, metric), by (variant, seed): grouped once, not filtered per call."""
        if self._grouped is None:
            per_seed = self.rows[self.rows["seed"] >= 0]
            self._grouped = {key: rows.sort_values(["variant", "seed"])
                             for key, rows in per_seed.groupby(["kind", "method", "metric"], sort=False)}
        return self._grouped.get((kind, method, metric))

    def _per_seed(self, kind: str, method: str, metric: str) -> np.ndarray | None:
        chosen = self._cell_rows(kind, method, metric)
        arrays = [] if chosen is None else [a for a in chosen["per_image"] if a is not None]
        if not arrays or len({np.shape(a) for a in arrays}) != 1:
            return None
        return np.stack([np.asarray(a, dtype=np.float64) for a in arrays])

    def _seed_mean(self, kind: str, method: str, metric: str) -> np.ndarray | None:
        per_seed = self._per_seed(kind, method, metric)
        return None if per_seed is None else per_seed.mean(0)

    def internal_consistency(self, column: Column, vectors: Mapping[str, np.ndarray]) -> float:
        alphas = [psy.cronbach_alpha(items) for items in (self._items(column, label) for label in vectors)
                  if items is not None and items.ndim == 2]
        alphas = [a for a in alphas if a == a]
        return float(np.mean(alphas)) if alphas else math.nan

    # --- f. test-retest ---------------------------------------------------------------------------------
    def test_retest(self, column: Column, found: Mapping[tuple[str, str], Any]) -> float:
        from ..metrics import METRICS
        if column.source == "stability":
            return math.nan  # a stability value already compares seeds
        score = METRICS[column.metric].per_image_score
        iccs = []
        for (_kind, method), cell in found.items():
            if cell is None or cell.per_image is None or is_reference(method) or cell.per_image.shape[0] < 2:
                continue
            per_seed = cell.per_image
            if per_seed.ndim > 2 and score is not None:
                per_seed = np.stack([score(tables) for tables in per_seed])
            if per_seed.ndim == 2:
                value = psy.icc_2_1(per_seed.T)
                if value == value:
                    iccs.append(value)
        return float(np.mean(iccs)) if iccs else math.nan

    # --- g. MetaQuantus ---------------------------------------------------------------------------------
    def meta_consistency(self, column: Column, found: Mapping[tuple[str, str], Any]) -> dict[str, float]:
        empty = dict.fromkeys(("iac_nr", "iac_ar", "iec_nr", "iec_ar", "mc", "mc_input", "mc_model"), math.nan)
        if self.settings.reliability != "full" or column.source == "stability":
            return empty
        from ..metrics import METRICS
        score = METRICS[column.metric].per_image_score
        by_test: dict[str, list[dict[str, float]]] = {test: [] for test in PERTURBATIONS}
        for test in PERTURBATIONS:
            small = self._perturbed(test, "small", column.metric)
            large = self._perturbed(test, "large", column.metric)
            for model in sorted(set(small) & set(large)):
                kind = model[0]
                methods = [m for (k, m) in found if k == kind and not is_reference(m)
                           and (m in small[model] and m in large[model])]
                originals = [self._original(m, model, column.metric, score) for m in methods]
                if len(methods) < 2 or any(o is None for o in originals):
                    continue
                original = np.stack(originals)
                lengths = {original.shape[-1]} | {small[model][m].shape[-1] for m in methods} \
                    | {large[model][m].shape[-1] for m in methods}
                if len(lengths) != 1:
                    continue
                by_test[test].append(metaquantus.meta_consistency(
                    original, np.stack([small[model][m] for m in methods], axis=1),
                    np.stack([large[model][m] for m in methods], axis=1), column.higher_is_better))
        result = dict(empty)
        per_test = {test: {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
                    for test, runs in by_test.items() if runs}
        if not per_test:
            return result
        for key in ("iac_nr", "iac_ar", "iec_nr", "iec_ar", "mc"):
            result[key] = float(np.mean([values[key] for values in per_test.values()]))
        for test in PERTURBATIONS:
            if test in per_test:
                result[f"mc_{test}"] = per_test[test]["mc"]
        return result

    def _perturbed(self, test: str, strength: str, metric: str) -> dict[tuple, dict[str, np.ndarray]]:
        """(kind, variant, seed) -> method -> the (K, N) scores under one perturbation (camzoo.bench.perturbation)."""
        found: dict[tuple, dict[str, np.ndarray]] = {}
        for cell, array in self.store.arrays(self.run_id, f"perturbed_{test}_{strength}_{metric}",
                                             dataset=self.dataset, backbone=self.backbone):
            found.setdefault((cell.kind, cell.variant, cell.seed), {})[cell.method] = np.asarray(array, dtype=np.float64)
        return found

    def _original(self, method: str, model: tuple, metric: str, score: Any) -> np.ndarray | None:
        """One model's unperturbed per-image values of a method row (tables reduced like the perturbed ones)."""
        kind, variant, seed = model
        rows = self._cell_rows(kind, method, metric)
        chosen = None if rows is None else rows[(rows["variant"] == variant) & (rows["seed"] == seed)]
        if chosen is None or chosen.empty or chosen.iloc[0]["per_image"] is None:
            return None
        values = np.asarray(chosen.iloc[0]["per_image"], dtype=np.float64)
        if values.ndim > 1 and score is not None:
            values = np.asarray(score(values), dtype=np.float64)
        return values if values.ndim == 1 else None

    # --- h. validity ------------------------------------------------------------------------------------
    def validity(self, column: Column, vectors: Mapping[str, np.ndarray]) -> dict[str, float]:
        empty = {"tau_difull": math.nan, "tau_ci_low": math.nan, "tau_ci_high": math.nan}
        truth = self.vectors(GROUND_TRUTH)
        if not truth or not vectors:
            return empty
        common = [label for label in vectors if label in truth]
        if len(common) < 3:
            return empty
        tau, low, high = psy.kendall_tau_ci(np.stack([vectors[c] for c in common], axis=1),
                                            np.stack([truth[c] for c in common], axis=1), column.higher_is_better,
                                            self.columns[GROUND_TRUTH].higher_is_better, CI_RESAMPLES)
        return {"tau_difull": tau, "tau_ci_low": low, "tau_ci_high": high}

    # --- i. cost -----------------------------------------------------------------------------------------
    def cost(self, column: Column) -> float:
        """Seconds per image that the metric's scoring took, mean over the method cells that recorded it
        (``score_maps(seconds=)``: its own time plus every computation of the cell it read, so deletion
        and insertion each show the whole game they share)."""
        if self._seconds is None:
            names = {cell: array for cell, array in self.store.arrays(
                self.run_id, "metric_names", dataset=self.dataset, backbone=self.backbone)}
            self._seconds = {}
            for cell, values in self.store.arrays(self.run_id, "metric_seconds", dataset=self.dataset,
                                                  backbone=self.backbone):
                if cell in names and not is_reference(cell.method):
                    for name, value in zip(map(str, names[cell]), values):
                        self._seconds.setdefault(name, []).append(float(value))
        found = self._seconds.get(column.metric)
        return float(np.mean(found)) if found else math.nan


def _agreement(table: np.ndarray, higher_is_better: bool) -> dict[str, float]:
    """c. Krippendorff's α (ordinal) of the per-image rankings, with its CI; d. the mean inter-method ρ."""
    empty = {"alpha": math.nan, "alpha_ci_low": math.nan, "alpha_ci_high": math.nan, "inter_method": math.nan}
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        return empty
    ranks = psy.within_image_ranks(table, higher_is_better)
    low, high = psy.krippendorff_alpha_ci(ranks, CI_RESAMPLES)
    return {"alpha": psy.krippendorff_alpha_ordinal(ranks), "alpha_ci_low": low, "alpha_ci_high": high,
            "inter_method": psy.mean_offdiagonal_spearman(table)}


def card_line(card: Mapping[str, Any]) -> str:
    """One card in words: the column, its verdict and reason, and the numbers behind them."""
    numbers = [f"α = {card['alpha']:.2f}" if card["alpha"] == card["alpha"] else "",
               f"inter-method ρ = {card['inter_method']:.2f}" if card["inter_method"] == card["inter_method"] else "",
               f"Cronbach's α = {card['cronbach_alpha']:.2f}" if card["cronbach_alpha"] == card["cronbach_alpha"] else "",
               f"test–retest ICC = {card['icc']:.2f}" if card["icc"] == card["icc"] else "",
               f"MC = {card['mc']:.2f}" if card["mc"] == card["mc"] else "",
               f"τ with DiFull = {card['tau_difull']:.2f} [{card['tau_ci_low']:.2f}, {card['tau_ci_high']:.2f}]"
               if card["tau_difull"] == card["tau_difull"] else ""]
    numbers = [n for n in numbers if n]
    return (f"**{card['column']}** (`{card['metric']}`): **{card['verdict']}** — {card['reason']}"
            + (f" ({', '.join(numbers)})" if numbers else "") + ".")


def believe_markdown(cards: pd.DataFrame) -> str:
    """summary.md's "Which columns to believe": one line per card, per (dataset, backbone)."""
    if cards.empty:
        return ""
    parts = ["## Which columns to believe", "",
             "Each column's reliability card (reliability.csv; docs/metrics.md \"Which columns to believe\"): "
             "*rank* columns rank the leaderboard, *report* columns stay in the full tables, marked †."]
    for (dataset, backbone), group in cards.groupby(["dataset", "backbone"], sort=False):
        parts += ["", f"### {dataset} / {backbone}", ""] + [f"- {card_line(card)}" for _, card in group.iterrows()]
    return "\n".join(parts)


def reported_reasons(cards: pd.DataFrame) -> dict[str, str]:
    """metric -> why its card says ``report`` (the full tables mark those columns †)."""
    if cards.empty:
        return {}
    return dict(zip(cards.loc[cards["verdict"] == "report", "metric"], cards.loc[cards["verdict"] == "report", "reason"]))
