"""camzoo: class activation maps for CNN classifiers, and honest benchmarks of them.

The public names are imported on first use (PEP 562), not at ``import camzoo``: the ``camzoo``
command imports this package before it can catch Ctrl-C, and importing torch here took seconds in
which Ctrl-C printed a KeyboardInterrupt traceback instead of exiting 130.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import methods, targets
    from .api import explain, list_methods
    from .explanation import Explanation
    from .models import build_model

_LAZY = {"methods": (".methods", None), "targets": (".targets", None),
         "explain": (".api", "explain"), "list_methods": (".api", "list_methods"),
         "Explanation": (".explanation", "Explanation"), "build_model": (".models", "build_model")}

__all__ = ["Explanation", "__version__", "build_model", "explain", "list_methods", "methods", "targets"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'camzoo' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
