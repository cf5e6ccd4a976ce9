"""Model kind name -> class, the way CAM methods are registered: the trainer, the CLI, the
benchmark config and the report all read this one list, so a new kind is one class.

A kind class (a :class:`~camzoo.models.base.CamModel` subclass) declares its ``kind`` name, its
``options`` (build options beyond the common ones), whether it ``produces_attention`` (a map from
its own forward pass: ``forward_with_attention``), its ``task`` ("classification",
"segmentation" or "detection": what it predicts), and may override ``kind_kwargs`` /
``default_stem_stride1`` to turn build options into constructor arguments.
"""

from __future__ import annotations

from typing import TypeVar

from ..registry import Registry
from .base import CamModel

KINDS: Registry[type[CamModel]] = Registry("model kind")
K = TypeVar("K", bound=type[CamModel])


def register_kind(cls: K) -> K:
    """Class decorator adding a model kind under its ``kind`` name (and its old ``kind_aliases``).

    Args:
        cls: a :class:`~camzoo.models.base.CamModel` subclass that sets its own ``kind`` class attribute.

    Returns:
        ``cls``, now listed by :func:`kind_names` and built by ``camzoo.build_model(kind, ...)``.

    Raises:
        ValueError: no ``kind`` name (or ``CamModel``'s own), or a name or alias already registered to
            another class.
    """
    name = getattr(cls, "kind", "")
    if not name or name == CamModel.kind:
        raise ValueError(f"{cls.__name__} has no kind name; set the class attribute kind = '...'")
    return KINDS.add(name, cls, cls.kind_aliases)


def kind_names() -> list[str]:
    """Registered kinds in registration order (baseline, abn, lfi, segmenter, detector, then any added)."""
    return list(KINDS)


def get_kind(name: str) -> type[CamModel]:
    """The kind class registered as ``name`` (or an old name of it); a "did you mean" error otherwise."""
    return KINDS.lookup(name)
