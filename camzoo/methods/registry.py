"""Method name -> class, so the CLI, the benchmark harness and ``explain`` share one list."""

from __future__ import annotations

import difflib
from typing import TypeVar

from .base import CAMMethod

_METHODS: dict[str, type[CAMMethod]] = {}
M = TypeVar("M", bound=type[CAMMethod])


def register(cls: M) -> M:
    """Class decorator adding a method under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"a method called {cls.name!r} is already registered")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[CAMMethod]:
    key = name.lower().replace("-", "").replace("_", "") if isinstance(name, str) else name
    if key in _METHODS:
        return _METHODS[key]
    close = difflib.get_close_matches(str(key), list(_METHODS), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(method_names())}")
