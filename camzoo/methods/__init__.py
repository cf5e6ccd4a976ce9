"""CAM methods behind one base class; importing this package registers every built-in method.

Registration order is the order presets list methods in (``select_methods``): the gradient family,
Eigen-CAM and the activation methods, the perturbation and optimisation methods, LeGrad, the kinds'
own maps, the wrappers (SESS, RefineCAM), then the controls.
"""

from . import (  # noqa: F401  (registration, in the order presets list methods)
    gradient, gradient_family, shapley, finer, fullgrad, eigen, classic, activation_family, perturbation,
    smoothed_score, smoothgrad, optimisation, legrad, attention, wrappers, sess, controls,
)
from .base import COST_CLASSES, CAMMethod, GroundTruth, upsample_and_normalise
from .registry import (
    METHODS,
    SELECTORS,
    get_method,
    method_names,
    one_pass_groups,
    reference_method_names,
    register,
    select_methods,
    shares_one_pass,
    split_layer,
)
from .run import run_method

__all__ = [
    "CAMMethod",
    "COST_CLASSES",
    "GroundTruth",
    "METHODS",
    "SELECTORS",
    "get_method",
    "method_names",
    "one_pass_groups",
    "reference_method_names",
    "register",
    "run_method",
    "select_methods",
    "shares_one_pass",
    "split_layer",
    "upsample_and_normalise",
]
