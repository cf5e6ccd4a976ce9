"""Typed method options: the simple-type checks behind ``CAMMethod.check_options`` and how an option
is printed by ``camzoo methods`` (name, type, default)."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable


def type_hints(function: Callable) -> dict[str, object]:
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation that does not resolve: leave it unchecked
        return {}


def simple_type(annotation: object) -> tuple[type, ...] | None:
    """(int,), (float, int), (bool,) or (str,) for those annotations (plus NoneType for ``X | None``);
    None for anything else, which is left to the method's own checks."""
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    members = typing.get_args(annotation) if union else (annotation,)
    simple = {int: (int,), float: (float, int), bool: (bool,), str: (str,)}
    named = [m for m in members if m is not type(None)]
    if len(named) != 1 or named[0] not in simple:
        return None
    return simple[named[0]] + ((type(None),) if len(named) < len(members) else ())


def is_option_instance(value: object, expected: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in expected:
        return False  # True is an int to Python, not to a user who typed an iteration count
    return isinstance(value, expected)


def describe_option(parameter: inspect.Parameter) -> str:
    annotation = parameter.annotation
    kind = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    default = "" if parameter.default is inspect.Parameter.empty else f" = {parameter.default!r}"
    return f"{parameter.name} ({kind}{default})" if annotation is not inspect.Parameter.empty else \
        f"{parameter.name}{default}"
