"""The rest of the gradient family: Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, the element-wise
Grad-CAM, EigenGrad-CAM.

Each is one ``compute(activations, gradients)`` over the layer's activations A (B,C,h,w) and the
gradients G = dy_c/dA of the target logit y_c, so the base class (and the one-pass multi-method
run, ``methods/multi.py``) share one forward and one backward between all of them. Arithmetic is
float32, batched, on the activations' device. Where the paper leaves a choice, we take the one
pytorch-grad-cam (1.5.7) takes, so that its maps are an exact reference (tests/test_methods_zoo.py).
"""

from __future__ import annotations

import torch

from .base import CAMMethod
from .eigen import first_component_projection
from .registry import register

GRADCAM_PLUSPLUS_EPS = 1e-6  # pytorch-grad-cam's, in the denominator of alpha
XGRADCAM_EPS = 1e-7  # pytorch-grad-cam's, added to sum_hw A


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c w_c A_c): (B,C) channel weights -> (B,h,w) map."""
    return torch.einsum("bc,bchw->bhw", weights, activations).clamp_min(0)


class ChannelWeightedCAM(CAMMethod):
    """A method whose map is ReLU(sum_c w_c A_c) for (B,C) channel weights :meth:`weights`: its compute
    and its eigen_smooth terms both follow from the weights (not registered itself)."""

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return _weighted_sum(self.weights(activations, gradients), activations.float())

    def channel_terms(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return self.weights(activations, gradients)[:, :, None, None] * activations.float()


@register
class GradCAMPlusPlus(ChannelWeightedCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): w_c = sum_hw alpha * ReLU(G), map = ReLU(sum_c w_c A_c).

    alpha = G^2 / (2 G^2 + sum_hw(A) G^3 + eps), and 0 where G = 0: the paper's closed form for an
    exponential of the logit (its eq. 19), as in the authors' and pytorch-grad-cam's code.
    """

    name = "gradcampp"
    family = "gradient"
    uses_gradients = True

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """(B,C) channel weights sum_hw alpha * ReLU(G)."""
        assert gradients is not None
        a, g = activations.float(), gradients.float()
        g2 = g * g
        denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + GRADCAM_PLUSPLUS_EPS
        alpha = torch.where(g != 0, g2 / denominator, torch.zeros_like(g))
        return (alpha * g.clamp_min(0)).sum(dim=(2, 3))



@register
class XGradCAM(ChannelWeightedCAM):
    """XGrad-CAM (Fu et al. 2020): w_c = sum_hw(G_c * A_c) / sum_hw(A_c), map = ReLU(sum_c w_c A_c).

    The axiom-derived weights (sensitivity and conservation); eps = 1e-7 in the denominator.
    """

    name = "xgradcam"
    family = "gradient"
    uses_gradients = True

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """(B,C) channel weights sum_hw(G * A) / sum_hw(A)."""
        assert gradients is not None
        a, g = activations.float(), gradients.float()
        return (g * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + XGRADCAM_EPS)



@register
class LayerCAM(CAMMethod):
    """LayerCAM (Jiang et al. 2021): map = ReLU(sum_c ReLU(G_c) * A_c), a weight per position.

    Works on shallow layers too, where one weight per channel (Grad-CAM) blurs the evidence.
    """

    name = "layercam"
    family = "gradient"
    uses_gradients = True

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return self.channel_terms(activations, gradients).sum(1).clamp_min(0)

    def channel_terms(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        assert gradients is not None
        return gradients.float().clamp_min(0) * activations.float()


@register
class HiResCAM(CAMMethod):
    """HiResCAM (Draelos & Carin 2020): map = ReLU(sum_c G_c * A_c), element-wise.

    Provably shows the locations the score depends on for models ending in one fully connected
    layer (Grad-CAM's spatial averaging of G can move evidence).
    """

    name = "hirescam"
    family = "gradient"
    uses_gradients = True

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return self.channel_terms(activations, gradients).sum(1).clamp_min(0)

    def channel_terms(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        assert gradients is not None
        return gradients.float() * activations.float()


@register
class GradCAMElementWise(CAMMethod):
    """Element-wise Grad-CAM (pytorch-grad-cam's GradCAMElementWise, after Selvaraju et al. 2017):
    map = sum_c ReLU(G_c * A_c).

    HiResCAM with the ReLU moved inside the channel sum: a position is credited only by the channels
    whose gradient and activation agree there, so negative evidence of one channel cannot cancel
    positive evidence of another.
    """

    name = "gradcam_elementwise"
    family = "gradient"
    summary = "Element-wise Grad-CAM: sum_c ReLU(G_c * A_c), the ReLU inside the channel sum"
    paper = "pytorch-grad-cam (Gildenblat et al. 2021), after Selvaraju et al. 2017"
    uses_gradients = True

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return self.channel_terms(activations, gradients).sum(1)

    def channel_terms(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        assert gradients is not None
        return (gradients.float() * activations.float()).clamp_min(0)


@register
class EigenGradCAM(CAMMethod):
    """EigenGrad-CAM (pytorch-grad-cam's class-specific Eigen-CAM, after Muhammad & Yeasin 2020):
    the first principal component of G * A, then ReLU.

    Same projection as ``eigencam`` (mean-centred, batched SVD) on G * A instead of A, with the same
    sign fix: the projection is made to correlate positively with sum_c G_c * A_c / C (HiResCAM's map).
    """

    name = "eigengradcam"
    family = "gradient"
    summary = "EigenGrad-CAM: the first principal component of G * A (a class-specific Eigen-CAM), then ReLU"
    paper = "pytorch-grad-cam (Gildenblat et al. 2021), after Muhammad & Yeasin 2020"
    uses_gradients = True

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        assert gradients is not None
        return first_component_projection(gradients.float() * activations.float()).clamp_min(0)
