"""camzoo: class activation maps for CNN classifiers, and honest benchmarks of them."""

from ._version import __version__
from .api import explain, methods
from .explanation import Explanation
from .models import build_model

__all__ = ["Explanation", "__version__", "build_model", "explain", "methods"]
