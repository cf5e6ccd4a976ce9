"""Method name -> class, so the CLI, the benchmark harness and ``explain`` share one list.

Controls (``random``, ``centre``, ``edges``, ``oracle``) are registered like any method, so every
caller runs them through the same pipeline; ``method_names(reference=...)`` lets a caller list them
apart, and a class's ``reference`` / ``needs_ground_truth`` flags say how to run and report it.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import NamedTuple, TypeVar

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


def method_names(reference: bool | None = None) -> list[str]:
    """Sorted names: all methods (None), only the controls (True), or only the explanation methods (False)."""
    if reference is not None and not isinstance(reference, bool):
        raise TypeError(f"reference must be True, False or None; got {reference!r}")
    return sorted(name for name, cls in _METHODS.items() if reference is None or cls.reference == reference)


def reference_method_names() -> list[str]:
    """Sorted names of the control rows (``reference = True``): random, centre, edges, oracle."""
    return method_names(reference=True)


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def get_method(name: str) -> type[CAMMethod]:
    """The class registered as ``name``; case, '-' and '_' are ignored ("Grad-CAM" finds "gradcam").

    ``captum:<Attribution>`` (e.g. ``captum:IntegratedGradients``) is any ``captum.attr`` class
    through camzoo's pipeline (:mod:`camzoo.methods.captum_adapter`); it is not in the registry's list.
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a name (str); got {type(name).__name__}")
    if name[:7].lower() == "captum:":
        from .captum_adapter import captum_method

        return captum_method(name[7:])
    if name in _METHODS:
        return _METHODS[name]
    key = _normalise(name)
    matches = [cls for registered, cls in _METHODS.items() if _normalise(registered) == key]
    if len(matches) == 1:
        return matches[0]
    close = difflib.get_close_matches(str(key), list(_METHODS), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(method_names())}")


class MethodInfo(NamedTuple):
    """What ``camzoo methods`` prints for one method."""

    name: str
    summary: str
    paper: str
    reference: bool


_CITATION = re.compile(r"\(([A-Z][^()]*?(?:19|20)\d\d)\)")


def describe(name: str) -> MethodInfo:
    """One-line description and paper of a method: its class attributes ``summary`` / ``paper`` when
    set, else the docstring's first sentence (without a leading "``name``:") and the first
    "(Author et al. YEAR)" in its first paragraph.

    Why from the class: a method registered by user code is described with no list to update.
    """
    cls = get_method(name)
    doc = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    first = re.split(r"\.\s+(?=[A-Z`])", doc, maxsplit=1)[0].rstrip(".") if doc else ""
    first = re.sub(rf"^``{re.escape(cls.name)}``:\s*", "", first)
    found = _CITATION.search(doc)
    if found:  # the paper gets its own field; the description need not repeat it
        first = first.replace(f" {found.group(0)}", "")
    summary = str(getattr(cls, "summary", "") or first.replace("``", "") or "(no description)")
    paper = str(getattr(cls, "paper", "") or (found.group(1) if found else ""))
    return MethodInfo(cls.name, summary, paper, bool(cls.reference))
