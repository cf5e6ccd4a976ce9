"""CAM methods behind one base class; importing this package registers every built-in method."""

from . import attention, controls, eigen, gradient, gradient_family, optimisation, perturbation  # noqa: F401  (registration)
from .base import CAMMethod, GroundTruth, upsample_and_normalise
from .registry import get_method, method_names, reference_method_names, register

__all__ = [
    "CAMMethod",
    "GroundTruth",
    "get_method",
    "method_names",
    "reference_method_names",
    "register",
    "upsample_and_normalise",
]
