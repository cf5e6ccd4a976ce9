"""CAM methods behind one base class; importing this package registers every built-in method."""

from . import attention, eigen, gradient  # noqa: F401  (registration side effect)
from .base import CAMMethod, upsample_and_normalise
from .registry import get_method, method_names, register

__all__ = ["CAMMethod", "get_method", "method_names", "register", "upsample_and_normalise"]
