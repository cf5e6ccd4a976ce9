"""camzoo: class activation maps for CNN classifiers, and honest benchmarks of them."""

from ._version import __version__
from . import methods
from .api import explain, list_methods
from .explanation import Explanation
from .models import build_model

__all__ = ["Explanation", "__version__", "build_model", "explain", "list_methods", "methods"]
