"""Model kind name -> class, the way CAM methods are registered: the trainer, the CLI, the
benchmark config and the report all read this one list, so a new kind is one class.

A kind class (a :class:`~camzoo.models.base.CamModel` subclass) declares its ``kind`` name, its
``options`` (build options beyond the common ones), whether it ``produces_attention`` (a map from
its own forward pass: ``forward_with_attention``), and may override ``kind_kwargs`` /
``default_stem_stride1`` to turn build options into constructor arguments.
"""

from __future__ import annotations

import difflib
from typing import TypeVar

from .base import CamModel

_KINDS: dict[str, type[CamModel]] = {}
K = TypeVar("K", bound=type[CamModel])


def register_kind(cls: K) -> K:
    """Class decorator adding a model kind under its ``kind`` name."""
    name = getattr(cls, "kind", "")
    if not name or name == CamModel.kind:
        raise ValueError(f"{cls.__name__} has no kind name; set the class attribute kind = '...'")
    if name in _KINDS and _KINDS[name] is not cls:
        raise ValueError(f"a model kind called {name!r} is already registered")
    _KINDS[name] = cls
    return cls


def kind_names() -> list[str]:
    """Registered kinds in registration order (baseline, abn, lfi, then any added)."""
    return list(_KINDS)


def get_kind(name: str) -> type[CamModel]:
    if isinstance(name, str) and name in _KINDS:
        return _KINDS[name]
    close = difflib.get_close_matches(str(name), list(_KINDS), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model kind {name!r}.{hint} Choose one of {', '.join(_KINDS)}")
