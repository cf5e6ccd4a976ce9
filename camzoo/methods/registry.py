"""Method name -> class, so the CLI, the benchmark harness and ``explain`` share one list.

Controls (``random``, ``centre``, ``edges``, ``oracle``) are registered like any method, so every
caller runs them through the same pipeline; ``method_names(reference=...)`` lets a caller list them
apart, and a class's ``reference`` / ``needs_ground_truth`` flags say how to run and report it.
"""

from __future__ import annotations

import inspect
import re
from typing import NamedTuple, TypeVar
from collections.abc import Iterable

from ..registry import Registry
from .base import COST_CLASSES, CAMMethod


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


METHODS: Registry[type[CAMMethod]] = Registry("method", normalise=_normalise)
M = TypeVar("M", bound=type[CAMMethod])


def register(cls: M) -> M:
    """Class decorator adding a method under its ``name`` (and its old names, ``aliases``).

    Args:
        cls: a :class:`CAMMethod` subclass with a non-empty ``name`` and a ``cost`` in ``COST_CLASSES``.

    Returns:
        ``cls`` itself, now found by ``get_method`` / ``camzoo.explain`` under its name and aliases.

    Raises:
        ValueError: no ``name``, an unknown ``cost``, or a name or alias already registered to another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.cost not in COST_CLASSES:
        raise ValueError(f"method {cls.name!r}: cost must be one of {COST_CLASSES}, got {cls.cost!r}")
    return METHODS.add(cls.name, cls, cls.aliases)


def method_names(reference: bool | None = None) -> list[str]:
    """Sorted names: all methods (None), only the controls (True), or only the explanation methods (False)."""
    if reference is not None and not isinstance(reference, bool):
        raise TypeError(f"reference must be True, False or None; got {reference!r}")
    return sorted(name for name, cls in METHODS.items() if reference is None or cls.reference == reference)


def reference_method_names() -> list[str]:
    """Sorted names of the control rows (``reference = True``): random, centre, edges, oracle."""
    return method_names(reference=True)


_LAYER = re.compile(r"[A-Za-z_][\w.]*\Z")


def split_layer(name: str) -> tuple[str, str | None]:
    """``"gradcam@layer2"`` -> ``("gradcam", "layer2")``; a name without ``@LAYER`` -> ``(name, None)``.

    Why: a benchmark row may explain another layer than the method's default (a *variant*: Grad-CAM,
    XGrad-CAM and HiResCAM are one map at the last layer of a global-pooling CNN, not at an
    intermediate one). Selectors take the suffix too (``"@one-pass@layer2"``). The layer is a dotted
    module name of the model (checked against the model when the benchmark config is validated).
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a name (str); got {type(name).__name__}")
    at = name.find("@", 1)  # a selector's own leading "@" is not a layer suffix
    if at < 0:
        return name, None
    base, layer = name[:at], name[at + 1:]
    if "(" in base and ")" in layer:  # "sess(gradcam@layer2)": the layer belongs after the whole name
        inner_layer, _, rest = layer.partition(")")
        raise ValueError(f"method {name!r}: put the layer after the whole name, "
                         f"{base + ')' + rest + '@' + inner_layer!r} (it is the inner method's layer)")
    if not _LAYER.match(layer):
        raise ValueError(f"method {name!r}: the part after '@' must be a module name (e.g. 'gradcam@layer2'); "
                         f"got {layer!r}")
    return base, layer


_WRAPPED_NAME = re.compile(r"\s*([^()]*?)\s*\((.*)\)\s*\Z", re.DOTALL)


def get_method(name: str) -> type[CAMMethod]:
    """The class registered as ``name`` (or an old name of it); case, '-' and '_' are ignored
    ("Grad-CAM" finds "gradcam"). A layer variant ``NAME@LAYER`` (:func:`split_layer`) is NAME's
    class; the caller passes the layer.

    ``captum:<Attribution>`` (e.g. ``captum:IntegratedGradients``) is any ``captum.attr`` class
    through camzoo's pipeline (:mod:`camzoo.methods.captum_adapter`); it is not in the registry's list.
    ``WRAPPER(INNER)`` (e.g. ``sess(gradcam)``) is a wrapper method around any other method
    (:mod:`camzoo.methods.wrappers`); its class is named by the canonical names of both.
    """
    name, _ = split_layer(name)
    wrapped = _WRAPPED_NAME.match(name)
    if wrapped:
        return _wrapped_method(name, *wrapped.groups())
    if "(" in name or ")" in name:
        raise ValueError(f"method {name!r}: a wrapper is written WRAPPER(INNER), e.g. 'sess(gradcam)'")
    if name[:7].lower() == "captum:":
        from .captum_adapter import captum_method

        return captum_method(name[7:])
    return METHODS.lookup(name)


def _wrapped_method(name: str, wrapper: str, inner: str) -> type[CAMMethod]:
    """The class of ``WRAPPER(INNER)``: the wrapper's ``with_inner`` of the inner method's class."""
    outer = METHODS.lookup(wrapper)  # an unknown name: "did you mean"
    build = getattr(outer, "with_inner", None)
    if build is None:
        wrappers = [n for n, cls in METHODS.items() if hasattr(cls, "with_inner")]
        raise ValueError(f"method {name!r}: {outer.name!r} does not wrap another method; the wrappers are "
                         f"{', '.join(wrappers) or 'none'} (e.g. '{wrappers[0] if wrappers else 'sess'}(gradcam)')")
    if not inner.strip():
        raise ValueError(f"method {name!r} names no inner method; write e.g. '{outer.name}(gradcam)', or "
                         f"{outer.name!r} alone for its default")
    if "(" in inner or ")" in inner:
        raise ValueError(f"method {name!r}: wrappers do not nest; wrap a plain method, e.g. '{outer.name}(gradcam)'")
    return build(get_method(inner.strip()))


def shares_one_pass(cls: type[CAMMethod]) -> bool:
    """Whether a method is pure ``compute(activations, gradients)`` on its layer (the base's own
    ``raw_maps``), so one capture (one forward and one backward) serves it together with others."""
    return (cls.raw_maps is CAMMethod.raw_maps and cls.compute is not CAMMethod.compute
            and not cls.needs_ground_truth)


def one_pass_groups(methods: Iterable[str]) -> list[list[str]]:
    """The methods in groups explained together: the one-pass methods of each layer in one group (one
    forward and backward per batch; ``NAME@LAYER`` variants share the pass of their layer), every other
    method alone; in the order given."""
    methods = list(methods)
    shared: dict[str | None, list[str]] = {}
    for method in methods:
        if shares_one_pass(get_method(method)):
            shared.setdefault(split_layer(method)[1], []).append(method)
    groups: list[list[str]] = []
    for method in methods:
        group = shared.get(split_layer(method)[1], [])
        if method not in group:
            groups.append([method])
        elif method == group[0]:
            groups.append(group)
    return groups


# Selectors a config's ``methods`` list may hold beside names; each expands to registered methods in
# registration order (controls last), so a newly registered method joins every preset that selects it.
SELECTORS = {
    "@all": "every registered method, controls included",
    "@controls": "every control (reference) row",
    "@one-pass": "every method that shares one forward and backward (pure compute(activations, gradients))",
    "@family:NAME": "every method of that family (gradient, activation, perturbation, optimisation, attention, ...)",
    "@cost:CLASS": f"every method whose cost is at most CLASS ({', '.join(COST_CLASSES)})",
}


def _matches(selector: str, cls: type[CAMMethod]) -> bool:
    if selector == "@all":
        return True
    if selector == "@controls":
        return cls.reference
    if selector == "@one-pass":
        return shares_one_pass(cls)
    kind, _, value = selector.partition(":")
    if kind == "@family" and value:
        return cls.family == value
    if kind == "@cost" and value in COST_CLASSES:
        return COST_CLASSES.index(cls.cost) <= COST_CLASSES.index(value)
    raise ValueError(f"unknown method selector {selector!r}; selectors: {', '.join(SELECTORS)} "
                     f"(cost classes: {', '.join(COST_CLASSES)})")


def select_methods(items: Iterable[str]) -> list[str]:
    """Method names and selectors (``SELECTORS``) -> canonical method names, each once, in order.

    A selector lists explanation methods in registration order, then controls; a name is checked
    (unknown names fail with a "did you mean"); a ``@LAYER`` suffix (``"gradcam@layer2"``,
    ``"@one-pass@layer2"``) stays on every name it expands to (:func:`split_layer`).
    Why: presets say *which kind* of method they run
    ("every one-pass method, the kinds' own maps, every control") and never keep a list of names.
    """
    if isinstance(items, str):
        items = [items]
    ordered = sorted(METHODS.values(), key=lambda cls: cls.reference)  # stable: registration order within
    chosen: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"methods must be names or selectors (str); got {item!r}")
        item, layer = split_layer(item)
        suffix = "" if layer is None else f"@{layer}"
        if item.startswith("@"):
            chosen += [cls.name + suffix for cls in ordered if _matches(item, cls)]
        else:
            chosen.append(get_method(item).name + suffix)
    return list(dict.fromkeys(chosen))


def method_facts(name: str) -> str:
    """One line of what a method declares: family, cost class, whether it shares the one pass, options."""
    from .options import describe_option

    cls = get_method(name)
    options = ", ".join(describe_option(p) for p in cls.option_parameters().values()) or "none"
    one_pass = "; one pass" if shares_one_pass(cls) else ""
    return f"family {cls.family}; cost {cls.cost}{one_pass}; options: {options}"


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
