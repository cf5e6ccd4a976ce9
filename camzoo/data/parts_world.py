"""The class logic of the built-in "parts" dataset: which part variants make each class, the classes'
minimal sufficient part sets and their target-sensitivity pairs (FunnyBirds, Hesse et al., ICCV 2023).

Why its own module: the metrics score explanations against these sets, so they must be computable
from the class table alone, without rendering a pixel.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from .parts_classes import SUBSET_SLOTS, minimal_sufficient_table, target_sensitivity_table

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


def minimal_sufficient_sets(table: torch.Tensor, c: int) -> list[tuple[int, ...]]:
    """FunnyBirds' minimal sufficient part sets of class ``c``: the slot sets S (sorted tuples, by size
    then order) such that no other class has class c's variants on all of S (sufficient) and no proper
    subset of S is sufficient (minimal); one row of :func:`~camzoo.data.parts_classes.minimal_sufficient_table`."""
    row = minimal_sufficient_table(torch.as_tensor(table))[c]
    sets = [tuple(int(s) for s in SUBSET_SLOTS[b].nonzero().flatten()) for b in row.nonzero().flatten().tolist()]
    return sorted(sets, key=lambda found: (len(found), found))


def target_sensitivity_pair(table: torch.Tensor, c: int) -> tuple[int, int] | None:
    """FunnyBirds' target-sensitivity pair of class ``c``: over the classes at distance 3 from c (sharing
    exactly 2 slots with it), in class order, the first pair (c1, c2) whose shared slots with c are
    disjoint; None when there is none (a row of :func:`~camzoo.data.parts_classes.target_sensitivity_table`)."""
    c1, c2 = target_sensitivity_table(torch.as_tensor(table))[c].tolist()
    return None if c1 < 0 else (c1, c2)


def _valid(table: np.ndarray) -> bool:
    """Every class has a target-sensitivity pair, and at least a fifth of the classes have no
    single-slot sufficient set (their evidence needs two or more parts together)."""
    found = torch.from_numpy(table)
    if (target_sensitivity_table(found)[:, 0] < 0).any():
        return False
    singles = minimal_sufficient_table(found)[:, [1 << s for s in range(len(SLOTS))]]
    return int((~singles.any(1)).sum()) >= max(2, len(table) // 5)


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
