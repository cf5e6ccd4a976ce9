"""How a results store keeps values and gives them back: arrays as ``.npy`` blobs, and names stored
under an old alias under their current name.

Why apart from the store: these are pure functions of a value, used by the store and by whatever
reads its blobs directly; the store keeps the SQL.
"""

from __future__ import annotations

import io
from typing import Any
from collections.abc import Callable

import numpy as np


def canonical_names() -> dict[str, Callable[[str], str]]:
    """Old name -> current name, per stored field, from the registries' aliases (unknown names and
    the harness's own cell names, such as "model" and "gallery", stay as they are)."""
    from ..methods import METHODS
    from ..metrics import METRICS
    from ..models.kinds import KINDS

    def rename(registry: Any) -> Callable[[str], str]:
        aliases = registry.aliases()
        return lambda name: aliases.get(name, name)

    return {"method": rename(METHODS), "kind": rename(KINDS), "metric": rename(METRICS)}


def encode_array(array: np.ndarray | None) -> bytes | None:
    if array is None:
        return None
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.load(io.BytesIO(blob), allow_pickle=False)


__all__ = ["canonical_names", "decode_array", "encode_array"]
