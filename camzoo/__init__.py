"""camzoo: class activation maps for CNN classifiers, and honest benchmarks of them."""

from ._version import __version__

__all__ = ["__version__"]
