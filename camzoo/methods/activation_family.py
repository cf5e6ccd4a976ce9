"""Class-agnostic maps from the activations alone: FEM and KPCA-CAM.

Both are pure ``compute(activations, gradients)`` (gradients unused), so they join the one-pass
family: one forward serves them together with Grad-CAM and the rest. Everything is batched over the
images on the activations' device; no per-image loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import CAMMethod
from .registry import register


@register
class FEM(CAMMethod):
    """FEM, the Feature Explanation Method (Fuad et al. 2020): map = ReLU(sum_c w_c A_c), w_c the
    share of positions where A_c exceeds mean_hw(A_c) + k * std_hw(A_c).

    The k-sigma rule keeps a channel's weight for what stands out in it: a channel that fires in a
    few places weighs more than one that is uniformly high. std is the population one (ddof = 0,
    NumPy's default, as pytorch-grad-cam computes it); the comparison is strict (a constant channel
    weighs 0).
    """

    name = "fem"
    family = "activation"
    cost = "forward"

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None, *, k: float = 2.0,
                 **base_options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **base_options)
        self.k = float(k)

    def channel_terms(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """w_c * A_c (B,C,h,w): the terms whose channel sum is the map."""
        a = activations.float()
        std, mean = torch.std_mean(a, dim=(2, 3), correction=0, keepdim=True)
        weights = (a > mean + self.k * std).float().mean(dim=(2, 3), keepdim=True)
        return weights * a

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return self.channel_terms(activations, gradients).sum(1).clamp_min(0)


# scikit-learn's defaults for the kernels' other parameters, which pytorch-grad-cam's KPCA_CAM keeps
POLY_DEGREE = 3
COEF0 = 1.0
KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")  # KernelPCA's own, less "precomputed"


def kernel_matrix(points: torch.Tensor, kernel: str, gamma: float | None = None) -> torch.Tensor:
    """(B, n, n) kernel of each image's n points (B, n, C), as scikit-learn's ``pairwise_kernels``
    computes it (gamma None: 1 / C; degree 3 and coef0 1 where they apply). Computed in the points'
    dtype: the caller passes float64."""
    gamma = 1.0 / points.shape[-1] if gamma is None else gamma
    if kernel == "cosine":  # rows of norm 0 stay 0, as sklearn's normalize leaves them
        norms = points.norm(dim=-1, keepdim=True)
        points = points / torch.where(norms > 0, norms, torch.ones_like(norms))
    gram = points @ points.transpose(1, 2)
    if kernel in ("linear", "cosine"):
        return gram
    if kernel == "poly":
        return (gamma * gram + COEF0) ** POLY_DEGREE
    if kernel == "sigmoid":
        return torch.tanh(gamma * gram + COEF0)
    if kernel == "rbf":  # |x|^2 + |y|^2 - 2 x.y, clipped at 0 and exactly 0 on the diagonal (as sklearn)
        squares = gram.diagonal(dim1=1, dim2=2)
        distances = (squares[:, :, None] + squares[:, None, :] - 2 * gram).clamp_min(0)
        distances.diagonal(dim1=1, dim2=2).zero_()
        return torch.exp(-gamma * distances)
    raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")


def kernel_first_component(activations: torch.Tensor, kernel: str, gamma: float | None = None) -> torch.Tensor:
    """Each image's (h*w, C) activations, mean-centred over positions, projected on their first kernel
    principal component: scikit-learn's ``KernelPCA(n_components=1).fit_transform``, batched.

    That projection is sqrt(lambda1) * u1, with (lambda1, u1) the top eigenpair of the doubly centred
    kernel matrix (negative eigenvalues clipped to 0, as sklearn). Its sign is arbitrary; sklearn
    makes u1's largest-magnitude entry positive, we make the projection correlate positively with the
    channel-mean activation (as ``eigencam``), so the map follows the data. Returns (B,h,w).
    """
    batch, _, height, width = activations.shape
    matrix = activations.double().flatten(2).transpose(1, 2)  # (B, hw, C)
    centred = matrix - matrix.mean(dim=1, keepdim=True)
    k = kernel_matrix(centred, kernel, gamma)
    k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(k)
    projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()
    mean_activation = matrix.mean(dim=2)
    covariance = ((projection - projection.mean(1, keepdim=True))
                  * (mean_activation - mean_activation.mean(1, keepdim=True))).sum(1)
    sign = torch.where(covariance < 0, -1.0, 1.0).to(projection.dtype)
    return (projection * sign[:, None]).float().view(batch, height, width)


@register
class KPCACAM(CAMMethod):
    """KPCA-CAM (Karmani et al. 2024): Eigen-CAM with kernel PCA, the first kernel principal
    component of the mean-centred activations, then ReLU.

    A non-linear kernel lets the component follow structure a linear projection misses. Defaults are
    pytorch-grad-cam's ``KPCA_CAM``: the sigmoid kernel, gamma = 1 / C; the linear kernel gives
    Eigen-CAM's map. The sign is fixed as Eigen-CAM's (positive correlation with the channel-mean
    activation), where scikit-learn's is a convention on the eigenvector.
    """

    name = "kpcacam"
    family = "activation"
    cost = "forward"

    def __init__(self, model: nn.Module, layer: Any = None, batch_size: int | None = None, *,
                 kernel: str = "sigmoid", gamma: float | None = None, **base_options: Any) -> None:
        super().__init__(model, layer=layer, batch_size=batch_size, **base_options)
        if kernel not in KERNELS:
            raise ValueError(f"kpcacam: kernel {kernel!r} is not supported; choose one of {', '.join(KERNELS)} "
                             "(the kernels scikit-learn's KernelPCA names)")
        if gamma is not None and not gamma >= 0:
            raise ValueError(f"kpcacam: gamma must be >= 0 or None (1 / channels); got {gamma!r}")
        self.kernel = kernel
        self.gamma = None if gamma is None else float(gamma)

    def compute(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        return kernel_first_component(activations, self.kernel, self.gamma).clamp_min(0)
