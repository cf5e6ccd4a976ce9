"""The class logic of the built-in "parts" dataset: which part variants make each class, the classes'
minimal sufficient part sets and their target-sensitivity pairs (FunnyBirds, Hesse et al., ICCV 2023).

Why its own module: the metrics score explanations against these sets, so they must be computable
from the class table alone, without rendering a pixel.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import torch

SLOTS: tuple[str, ...] = ("beak", "eye", "foot", "tail", "wing")  # FunnyBirds' 5 part slots, this order
VARIANTS: tuple[int, ...] = (4, 3, 4, 9, 6)                       # variants per slot (shape x colour)
NUM_CLASSES = 50
MIN_CLASSES, MAX_CLASSES = 25, 100  # fewer classes rarely give every class a target-sensitivity pair
BACKGROUND_ID, BODY_ID = 0, 1        # part-map ids
FIRST_SLOT_ID = 2                    # slot s has id 2 + s (2..6)
FIRST_OBJECT_ID = 7                  # background distractor object k has id 7 + k
MAX_BACKGROUND = 8                   # default max distractors per image (option max_background)
TABLE_SEED = 0x9A27                  # the class table is a fixed, seeded choice


def check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or not MIN_CLASSES <= num_classes <= MAX_CLASSES:
        raise ValueError(f"parts: num_classes must be an int in {MIN_CLASSES}..{MAX_CLASSES}, got {num_classes!r}")


def _shared(table: np.ndarray, c: int) -> np.ndarray:
    """(C,5) bool: where each class has class c's variant."""
    return table == table[c]


def minimal_sufficient_sets(table: torch.Tensor, c: int) -> list[tuple[int, ...]]:
    """FunnyBirds' minimal sufficient part sets of class ``c``.

    Args:
        table: (C,5) the variant of each slot of each class (:func:`class_parts`).
        c: the class.

    Returns:
        The slot sets S (sorted tuples, by size then order) such that no other class has class c's
        variants on all of S (sufficient) and no proper subset of S is sufficient (minimal).
    """
    t = np.asarray(table)
    shared = np.delete(_shared(t, c), c, axis=0)
    found: list[tuple[int, ...]] = []
    for size in range(1, len(SLOTS) + 1):
        for subset in itertools.combinations(range(len(SLOTS)), size):
            if any(set(f) <= set(subset) for f in found):
                continue
            if not shared[:, list(subset)].all(axis=1).any():
                found.append(subset)
    return found


def target_sensitivity_pair(table: torch.Tensor, c: int) -> tuple[int, int] | None:
    """FunnyBirds' target-sensitivity pair of class ``c``.

    Args:
        table: (C,5) the class table.
        c: the class.

    Returns:
        Over the classes at distance 3 from c (sharing exactly 2 slots with it), in class order, the
        first pair (c1, c2), c1 before c2 in that list, whose shared slots with c are disjoint; None
        when there is no such pair.
    """
    shared = _shared(np.asarray(table), c)
    near = [d for d in range(len(shared)) if d != c and shared[d].sum() == 2]
    for i, c1 in enumerate(near):
        for c2 in near[i + 1:]:
            if not (shared[c1] & shared[c2]).any():
                return c1, c2
    return None


def _valid(table: np.ndarray) -> bool:
    """Every class has a target-sensitivity pair, and at least a fifth of the classes have no
    single-slot sufficient set (their evidence needs two or more parts together)."""
    n = len(table)
    if any(target_sensitivity_pair(table, c) is None for c in range(n)):
        return False
    joint = sum(min(len(s) for s in minimal_sufficient_sets(table, c)) >= 2 for c in range(n))
    return joint >= max(2, n // 5)


@cache
def _table(num_classes: int) -> np.ndarray:
    all_combos = np.stack(np.meshgrid(*[np.arange(v) for v in VARIANTS], indexing="ij"), -1).reshape(-1, len(SLOTS))
    for attempt in range(1000):  # a few attempts suffice for 25..100 classes; the loop makes it a fixed choice
        rng = np.random.default_rng((TABLE_SEED, num_classes, attempt))
        table = all_combos[np.sort(rng.choice(len(all_combos), size=num_classes, replace=False))]
        table = table[rng.permutation(num_classes)]
        if _valid(table):
            return table
    raise RuntimeError(f"parts: found no valid class table for {num_classes} classes; this is a bug")


def class_parts(num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """The variant of each slot of each class: a fixed, seeded choice of unique combinations.

    Args:
        num_classes: 25..100 (default 50, as FunnyBirds).

    Returns:
        (C,5) long. Every class has a target-sensitivity pair (:func:`target_sensitivity_pair`) and at
        least a fifth of the classes have minimal sufficient sets of 2+ slots only.
    """
    check_num_classes(num_classes)
    return torch.from_numpy(_table(int(num_classes)).copy()).long()


def class_names(num_classes: int = NUM_CLASSES) -> list[str]:
    """Readable class names: the variant of each slot, e.g. "b2-e0-f1-t7-w3"."""
    return ["-".join(f"{s[0]}{v}" for s, v in zip(SLOTS, row)) for row in class_parts(num_classes).tolist()]
