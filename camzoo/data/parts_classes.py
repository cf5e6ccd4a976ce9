"""A class table's structure that the FunnyBirds protocol reads: minimal sufficient sets, TS pairs.

Why apart from the scores (camzoo.metrics.parts): these depend on the classes alone, not on a model
or a map; the dataset chooses its class table with them (camzoo.data.parts_world) and the metrics score
against them. Both are whole-table tensor operations over the
32 subsets of the 5 slots (FunnyBirds' datasets/funny_birds.py and evaluation_protocols.py).
"""

from __future__ import annotations

import torch

NUM_SLOTS = 5
SUBSETS = 1 << NUM_SLOTS
SLOT_INDEX = torch.arange(NUM_SLOTS)
SUBSET_SLOTS = ((torch.arange(SUBSETS)[:, None] >> SLOT_INDEX) & 1).bool()  # (32,5): bit s of subset b = slot s


def minimal_sufficient_table(table: torch.Tensor) -> torch.Tensor:
    """(C, 32) bool: subset b (bit s = slot s) is a minimal sufficient part set of class c.

    FunnyBirds.get_minimal_sufficient_part_sets' definition: no other class has class c's variants on
    every slot of b (sufficient), and no proper subset of b is sufficient (minimal). Unlike the
    reference's loop, which skips its own class before the check that appends, the last class gets its sets.

    Args:
        table: (C,5) the variant of each slot of each class.

    Returns:
        (C, 32) bool; column 0 (the empty set) is False.
    """
    table = table.cpu()
    classes = table.shape[0]
    agree = table[:, None, :] == table[None, :, :]
    covers = (agree[:, :, None, :] | ~SUBSET_SLOTS[None, None]).all(-1)
    covers[torch.arange(classes), torch.arange(classes)] = False
    sufficient = ~covers.any(1)
    sufficient[:, 0] = False
    index = torch.arange(SUBSETS)
    proper = ((index[None, :] & index[:, None]) == index[None, :]) & (index[None, :] != index[:, None])
    return sufficient & ~(sufficient[:, None, :] & proper[None]).any(-1)


def target_sensitivity_table(table: torch.Tensor) -> torch.Tensor:
    """(C, 2) long: target_sensitivity_protocol's class pair per class, -1 where there is none.

    Over the classes that share exactly two slots with c, in class order, the first pair (class1 before
    class2) whose shared slots with c are disjoint.

    Args:
        table: (C,5) the variant of each slot of each class.

    Returns:
        (C, 2) long: class1, class2 (or -1, -1).
    """
    table = table.cpu()
    classes = table.shape[0]
    agree = table[:, None, :] == table[None, :, :]
    shared = (agree.long() << SLOT_INDEX).sum(-1)
    near = agree.sum(-1) == 2
    later = torch.ones(classes, classes, dtype=torch.bool).triu(1)
    fits = near[:, :, None] & near[:, None, :] & ((shared[:, :, None] & shared[:, None, :]) == 0) & later[None]
    flat = fits.flatten(1)
    first = flat.long().argmax(1)
    pairs = torch.stack([first // classes, first % classes], 1)
    return torch.where(flat.any(1)[:, None], pairs, torch.full_like(pairs, -1))
