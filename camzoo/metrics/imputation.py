"""ROAD's noisy linear imputation (Rong et al., ICML 2022): removed pixels become the weighted mean
of their in-image 8-neighbours (1/6 direct, 1/12 diagonal; known pixels fixed), plus seeded noise.

Why its own module: the MoRF/LeRF substrate "road" depends on which pixels are removed, so it is
solved for every perturbed input — small holes by batched dense Cholesky solves; large ones on the CPU
by one sparse LU factorisation each (what ROAD's own ``spsolve`` does), on a GPU by a batched
Jacobi-preconditioned conjugate gradient with no loop per image. Tested against
scipy.sparse.linalg.spsolve.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ._checks import check_images

ROAD_NOISE = 0.01  # ROAD's NoisyLinearImputer(noise=0.01), in the images' units (see road_impute)
ROAD_TOL = 1e-6

_CHECK_EVERY = 16  # solver iterations between convergence checks (each check is one host sync)
# Systems with at most this many removed pixels are solved directly (dense Cholesky). Measured on one
# CPU thread, 64 inputs of 32 px: at 205 unknowns 4x faster than the iterative solver, at 410 about
# even, at 512 three times slower (the dense work grows with the cube of the unknowns, the iterative
# one with the image's area times the hole's diameter).
DIRECT_MAX = 256
_DIRECT_GROUP = 16
# How the larger systems are solved (linear_imputation's ``solver``). "sparse": one SuperLU factorisation
# per image on the host, exact to float64 rounding; measured on 2 CPU cores, 224 px inputs with up to
# 15 % removed in one blob (the bench's default MoRF/LeRF steps): ~11 ms per input against ~1.2 s for
# the conjugate gradient, whose ~300 iterations each sweep the whole image. "cg": that conjugate
# gradient, on the device (a GPU's choice: no host round trip, no loop per image).
SOLVERS = ("auto", "sparse", "cg")  # systems per dense solve, grouped by size so that padding costs little
# ROAD's neighbour weights: (row offset, column offset, weight); _neighbour_sum applies the same ones.
_NEIGHBOURS = ((-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
               (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12))


# --------------------------------------------------------------------------- ROAD imputation


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's in-image neighbours, per channel: (N,C,H,W) -> (N,C,H,W).

    Zero padding drops neighbours outside the image, as ROAD does (it removes their weight from
    the pixel's total instead of inventing values there). Eight shifted slices rather than a
    one-channel ``conv2d``: the same numbers, but on the CPU ``conv2d`` costs ~16 ms even for a
    24 x 24 batch (it is called once per solver iteration), the slices ~0.1 ms.
    """
    height, width = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    direct = p[..., :height, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :width] + p[..., 1:-1, 2:]
    diagonal = p[..., :height, :width] + p[..., :height, 2:] + p[..., 2:, :width] + p[..., 2:, 2:]
    return (2 * direct + diagonal) / 12  # ROAD: 1/6 per direct, 1/12 per diagonal neighbour


def linear_imputation(images: torch.Tensor, removed: torch.Tensor, tol: float = ROAD_TOL,
                      max_iter: int | None = None, direct_max: int = DIRECT_MAX, solver: str = "auto") -> torch.Tensor:
    """ROAD's linear imputation without noise: every removed pixel = weighted mean of its neighbours.

    For each image and channel, the removed pixels solve the sparse linear system that ROAD's
    ``NoisyLinearImputer`` builds and hands to ``scipy.sparse.linalg.spsolve``: for a removed pixel i,
    ``sum_j w_j (x_i - x_j) = 0`` over its in-image 8-neighbours j (w = 1/6 direct, 1/12 diagonal),
    with known pixels fixed. The matrix is symmetric positive definite as soon as the image keeps
    one known pixel. Small systems (at most ``direct_max`` removed pixels; the channels share the
    matrix) are solved by a batched dense Cholesky factorisation, in groups of similar size: exact up
    to rounding (about 1e-5 in float32 on 32 px images, below the iterative solver's tolerance). The
    others go to ``solver``: "sparse" factorises each image's sparse system once (SciPy's SuperLU,
    symmetric mode, minimum-degree ordering; float64 on the host, the channels as right-hand sides):
    exact to rounding, as ROAD's ``spsolve``. "cg" solves them all at once by a Jacobi-preconditioned
    conjugate gradient whose matrix-vector product is one 3x3 neighbour sum: no Python loop over
    images, no host round trip except a convergence check every few iterations. "auto": "sparse" for
    CPU tensors (~100x faster there at 224 px, ``SOLVERS``), "cg" on other devices. ``direct_max=0``
    sends every system to ``solver``.

    The conjugate gradient's stopping rule: a system stops once every removed pixel differs from the
    weighted mean of its neighbours by at most ``tol * max|known pixel|`` (checked every 16 iterations);
    a warning names the reached defect if ``max_iter`` (default ``10 * max(H, W) + 100``) comes first.
    The error is at most the defect times the walk's expected exit time (maximum principle), which
    grows with the hole's area; measured against a float64 solve, the default ``tol=1e-6`` leaves
    errors of 1e-5 to 4e-4 in normalised units on 224 px images with up to 90% removed in one disc
    (float32's own floor is about the same), far below 8-bit quantisation (~0.017) and ROAD's noise
    (0.01). Iterations grow with the hole's diameter: ~200 for a 140 px hole, ~500 for 90% of a 224 px
    image. Computed in float32 (float64 inputs stay float64); ``tol`` and ``max_iter`` apply to it only.

    A removed region can only be cut off from every known pixel when the whole image is removed;
    such an image gets its own per-channel mean (the system is singular there, and ROAD's spsolve
    fails).

    Args:
        images: (N,C,H,W) images; the values at removed pixels are ignored (except for the mean of a
            fully removed image).
        removed: (N,H,W) bool, True = pixel to impute.
        tol: relative defect at which a system the conjugate gradient solves counts as solved.
        max_iter: iteration cap of the conjugate gradient.
        direct_max: the most removed pixels of a system solved by dense Cholesky (``DIRECT_MAX``).
        solver: how larger systems are solved: "auto", "sparse" or "cg" (``SOLVERS``, above).

    Returns:
        (N,C,H,W): the images with removed pixels imputed, known pixels unchanged (bit for bit), in the
        images' dtype and on their device.

    Raises:
        TypeError: ``images`` not a float tensor; ``removed`` not a bool tensor.
        ValueError: ``images`` not (N,C,H,W) or not finite; ``removed`` not (N,H,W) to match, or on
            another device; ``tol <= 0``; ``max_iter < 0``; ``direct_max`` not an integer >= 0; an
            unknown ``solver``.
    """
    images, removed = _check_imputation_inputs(images, removed)
    n, c, h, w = images.shape
    if not float(tol) > 0:
        raise ValueError(f"tol must be > 0; got {tol}")
    max_iter = 10 * max(h, w) + 100 if max_iter is None else int(max_iter)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0; got {max_iter}")
    if isinstance(direct_max, bool) or not isinstance(direct_max, int) or direct_max < 0:
        raise ValueError(f"direct_max must be an integer >= 0 (0: always the iterative solver); got {direct_max!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}")
    sparse = solver == "sparse" or (solver == "auto" and images.device.type == "cpu")
    work = images if images.dtype == torch.float64 else images.float()
    unknown = removed[:, None].to(work.dtype)  # (N,1,H,W), 1 = removed
    known = work * (1 - unknown)
    known_count = (1 - unknown).sum((2, 3), keepdim=True)  # (N,1,1,1)
    solvable = known_count > 0
    # Start: the per-channel mean of the known pixels (of the whole image when none is known).
    start_mean = torch.where(solvable, known.sum((2, 3), keepdim=True) / known_count.clamp(min=1),
                             work.mean((2, 3), keepdim=True))
    solution = start_mean * unknown
    if bool(removed.any()) and bool(solvable.any()):
        total_weight = _neighbour_sum(torch.ones(1, 1, h, w, dtype=work.dtype, device=work.device))
        sizes = removed.flatten(1).sum(1)
        direct = solvable.view(-1) & (sizes > 0) & (sizes <= direct_max)
        if bool(direct.any()):
            rows = direct.nonzero()[:, 0]
            solution[rows] = _direct_solve(known[rows], removed[rows], sizes[rows], total_weight)
        iterative = solvable & ~direct.view(-1, 1, 1, 1) & (sizes > 0).view(-1, 1, 1, 1)
        if bool(iterative.any()) and sparse:
            rows = iterative.view(-1).nonzero()[:, 0]
            solution[rows] = _sparse_solve(known[rows], removed[rows], total_weight)
        elif bool(iterative.any()):
            scale = known.abs().amax((1, 2, 3), keepdim=True).clamp(min=torch.finfo(work.dtype).tiny)
            solution = _conjugate_gradient(known, unknown, solution, total_weight, iterative, tol * scale, max_iter)
    return torch.where(removed[:, None], solution.to(images.dtype), images)


def _direct_solve(known: torch.Tensor, removed: torch.Tensor, sizes: torch.Tensor,
                  total_weight: torch.Tensor) -> torch.Tensor:
    """The removed pixels of each image solved exactly: ``(S - W) u = W known`` as a dense system.

    Images are taken in order of their number of removed pixels, ``_DIRECT_GROUP`` at a time; each
    group's systems are padded to its largest (padding rows are the identity) and factorised by one
    batched Cholesky call in the images' dtype, with the channels as right-hand sides.

    Args: ``known`` (N,C,H,W) with removed pixels zeroed; ``removed`` (N,H,W) bool, every image with
    at least one known pixel; ``sizes`` (N,) removed pixels per image; ``total_weight`` (1,1,H,W).
    Returns: (N,C,H,W) the solution on the removed pixels, zero elsewhere.
    """
    n, c, h, w = known.shape
    device = known.device
    right_side = _neighbour_sum(known).flatten(2)  # W known, (N,C,H*W)
    diagonal = total_weight.flatten()
    offsets = torch.tensor([(dy, dx) for dy, dx, _ in _NEIGHBOURS], device=device)
    weights = torch.tensor([weight for *_, weight in _NEIGHBOURS], dtype=known.dtype, device=device)
    result = torch.zeros(n, c, h * w, dtype=known.dtype, device=device)
    order = torch.argsort(sizes)
    group_sizes = sizes[order].tolist()
    for start in range(0, n, _DIRECT_GROUP):
        members = order[start:start + _DIRECT_GROUP]
        count, unknowns = members.shape[0], int(group_sizes[min(start + _DIRECT_GROUP, n) - 1])
        flat = removed[members].flatten(1)
        # slot -> pixel: the removed pixels first (raster order), then known pixels as padding
        pixel = torch.argsort((~flat).to(torch.uint8), dim=1, stable=True)[:, :unknowns]
        valid = torch.arange(unknowns, device=device) < sizes[members, None]
        slot = torch.full((count, h * w + 1), unknowns, dtype=torch.long, device=device)  # pixel -> slot
        slot.scatter_(1, torch.where(valid, pixel, h * w), torch.arange(unknowns, device=device).expand(count, -1))
        slot[:, h * w] = unknowns  # known, padding and outside pixels all map to the spare column
        row, col = (pixel // w)[..., None] + offsets[:, 0], (pixel % w)[..., None] + offsets[:, 1]
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        neighbour = slot.gather(1, torch.where(inside, row * w + col, h * w).flatten(1)).view(count, unknowns, -1)
        matrix = torch.zeros(count, unknowns, unknowns + 1, dtype=known.dtype, device=device)
        matrix.scatter_add_(2, neighbour, (-weights * valid[..., None]).expand(count, unknowns, -1).contiguous())
        matrix = matrix[..., :unknowns]
        matrix.diagonal(dim1=1, dim2=2).copy_(torch.where(valid, diagonal[pixel], 1.0))
        rhs = right_side[members].gather(2, pixel[:, None].expand(-1, c, -1)) * valid[:, None]
        values = torch.cholesky_solve(rhs.transpose(1, 2), torch.linalg.cholesky(matrix))
        values = values.transpose(1, 2) * valid[:, None]  # (count, C, unknowns)
        result[members] = result[members].scatter(2, pixel[:, None].expand(-1, c, -1), values)
    return result.view(n, c, h, w)


def _sparse_solve(known: torch.Tensor, removed: torch.Tensor, total_weight: torch.Tensor) -> torch.Tensor:
    """The removed pixels of each image solved exactly: ``(S - W) u = W known`` as a sparse system, one
    SuperLU factorisation per image (symmetric mode: no pivoting, minimum-degree ordering of A + A^T),
    in float64 on the host, the channels as right-hand sides. The images are spread over torch's CPU
    threads (SuperLU releases the GIL: two threads halve the time on two cores); each is solved
    alone, so the result does not depend on the threads.

    Args: as :func:`_direct_solve` (every image with at least one removed and one known pixel).
    Returns: (N,C,H,W) the solution on the removed pixels, zero elsewhere, in ``known``'s dtype and device.
    """
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor

    n, c, h, w = known.shape
    right_side = _neighbour_sum(known.double()).flatten(2).cpu().numpy()  # W known, (N,C,H*W)
    masks = removed.flatten(1).cpu().numpy()
    diagonal = total_weight.flatten().double().cpu().numpy()
    result = np.zeros((n, c, h * w))

    def solve(index: int) -> None:
        pixel = np.flatnonzero(masks[index])
        result[index][:, pixel] = _sparse_system(pixel, h, w, diagonal).solve(
            np.ascontiguousarray(right_side[index][:, pixel].T)).T

    workers = min(n, max(1, torch.get_num_threads()))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(solve, range(n)))
    else:
        for index in range(n):
            solve(index)
    return torch.from_numpy(result).to(device=known.device, dtype=known.dtype).view(n, c, h, w)


def _sparse_system(pixel: Any, h: int, w: int, diagonal: Any) -> Any:
    """SuperLU factors of ``S - W`` on the removed pixels ``pixel`` (raster indices) of an h x w image."""
    import numpy as np
    from scipy import sparse
    from scipy.sparse.linalg import splu

    count = pixel.size
    slot = np.full(h * w, -1, dtype=np.int64)  # pixel -> unknown, -1: known
    slot[pixel] = np.arange(count)
    row, col = np.divmod(pixel, w)
    rows, cols, values = [np.arange(count)], [np.arange(count)], [diagonal[pixel]]
    for dy, dx, weight in _NEIGHBOURS:
        y, x = row + dy, col + dx
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        neighbour = np.where(inside, slot[np.where(inside, y * w + x, 0)], -1)
        linked = np.flatnonzero(neighbour >= 0)
        rows.append(linked)
        cols.append(neighbour[linked])
        values.append(np.full(linked.size, -weight))
    matrix = sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(count, count))
    return splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})


def _conjugate_gradient(known: torch.Tensor, unknown: torch.Tensor, start: torch.Tensor,
                        total_weight: torch.Tensor, solvable: torch.Tensor, tol: torch.Tensor,
                        max_iter: int) -> torch.Tensor:
    """Batched Jacobi-preconditioned CG for ``(S - W) u = W known`` on the removed pixels.

    S is the diagonal of each pixel's in-image neighbour weight, W the neighbour sum; every
    (image, channel) pair is its own system with its own step sizes (reductions over H,W only).
    Systems that have converged (or cannot be solved) are frozen, so float32 round-off cannot
    drift them afterwards; at each convergence check, images whose systems have all converged
    leave the working batch (why: the removed areas of a MoRF/LeRF batch range from none to the
    largest hole, and the small ones converge many iterations earlier; measured on 1,024 32-px
    inputs with 0-20 % removed, one thread: 2.30 -> 1.47 s solved at once, 1.05 -> 0.73 s in
    chunks of 256, unchanged at 0.56 s in the bench's chunks of 64).
    """
    def operator(v: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        return (total_weight * v - _neighbour_sum(v)) * holes

    tiny = torch.finfo(known.dtype).tiny
    result = start.clone()
    rows = torch.arange(known.shape[0], device=known.device)  # images still in the working batch
    active = solvable.expand(-1, known.shape[1], -1, -1).clone()  # (N,C,1,1)
    solution = start
    residual = (_neighbour_sum(known) * unknown - operator(solution, unknown)) * active
    preconditioned = residual / total_weight
    direction = preconditioned
    rz = (residual * preconditioned).sum((2, 3), keepdim=True)
    defect = torch.zeros(())
    for iteration in range(max_iter + 1):
        if iteration % _CHECK_EVERY == 0 or iteration == max_iter:
            defect = (residual.abs() / total_weight).amax((2, 3), keepdim=True)  # |x_i - mean of nbrs|
            active &= defect > tol
            live = active.flatten(1).any(1)
            if not bool(live.all()):
                result[rows[~live]] = solution[~live]
                keep = live.nonzero()[:, 0]
                if keep.numel() == 0:
                    return result
                rows, solution, residual, direction = rows[keep], solution[keep], residual[keep], direction[keep]
                rz, active, unknown, tol, defect = rz[keep], active[keep], unknown[keep], tol[keep], defect[keep]
            if iteration == max_iter:
                break
        product = operator(direction, unknown)
        curvature = (direction * product).sum((2, 3), keepdim=True)
        step = torch.where(active & (curvature > 0), rz / curvature.clamp(min=tiny), 0.0)
        solution = solution + step * direction
        residual = residual - step * product
        preconditioned = residual / total_weight
        rz_next = (residual * preconditioned).sum((2, 3), keepdim=True)
        direction = preconditioned + torch.where(rz > 0, rz_next / rz.clamp(min=tiny), 0.0) * direction
        rz = rz_next
    result[rows] = solution
    worst = float((defect / tol).amax())
    warnings.warn(
        f"linear imputation stopped after max_iter={max_iter} iterations at {worst:.3g} x the requested "
        "tolerance; raise max_iter or tol",
        RuntimeWarning,
        stacklevel=3,
    )
    return result


def _check_imputation_inputs(images: object, removed: object) -> tuple[torch.Tensor, torch.Tensor]:
    images = check_images(images)
    if not isinstance(removed, torch.Tensor) or removed.dtype != torch.bool:
        raise TypeError("removed must be a bool torch.Tensor (N,H,W), True = pixel to impute")
    if removed.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"removed must be (N,H,W) = {(images.shape[0], *images.shape[2:])} to match the images "
            f"{tuple(images.shape)}; got {tuple(removed.shape)}"
        )
    if removed.device != images.device:
        raise ValueError(f"images are on {images.device} but removed on {removed.device}")
    return images, removed


def noise_scale(noise: float | torch.Tensor | Sequence[float], channels: int,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ROAD's noise magnitude as a (1,C,1,1) tensor: one number, or one per channel."""
    scale = torch.as_tensor(noise, dtype=dtype, device=device)
    if scale.dim() == 0:
        scale = scale.expand(channels)
    if scale.dim() != 1 or scale.shape[0] != channels:
        raise ValueError(f"road noise must be a number or one per channel ({channels}); got shape {tuple(scale.shape)}")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError(f"road noise must be finite and >= 0; got {scale.tolist()}")
    return scale[None, :, None, None]


def noise_field(shape: torch.Size, scale: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded Gaussian field (N,C,H,W) times ``scale``, drawn on the scale's device."""
    generator = torch.Generator(device=scale.device)
    generator.manual_seed(int(seed))
    return torch.randn(shape, generator=generator, device=scale.device, dtype=scale.dtype) * scale


def road_impute(images: torch.Tensor, removed: torch.Tensor,
                noise: float | torch.Tensor | Sequence[float] = ROAD_NOISE, seed: int = 0,
                tol: float = ROAD_TOL, max_iter: int | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al., ICML 2022): ``linear_imputation`` + Gaussian noise.

    Every removed pixel (each channel) gets ``noise * N(0,1)`` added after the solve, as ROAD's
    ``NoisyLinearImputer(noise=0.01)`` does; known pixels are untouched. The noise hides the
    imputation's smoothness, which would otherwise tell the model where pixels were removed.
    ROAD imputes images in [0,1] pixel units *before* normalising them, so its 0.01 corresponds to
    ``0.01 / std`` on normalised images (linear imputation itself commutes with the per-channel
    normalisation, so only the noise scale depends on where it is applied): pass that per-channel
    tensor to match ROAD exactly. Reproducible for a given ``seed`` on a given device.

    Args:
        images: (N,C,H,W) finite float images; the values at removed pixels are ignored (except for the
            mean of a fully removed image, see ``linear_imputation``).
        removed: (N,H,W) bool on the images' device, True = pixel to impute.
        noise: standard deviation of the added noise, in the images' units: one number >= 0 or one per
            channel (C,); 0 everywhere = plain ``linear_imputation``.
        seed: seeds the noise field (a ``torch.Generator`` on the images' device).
        tol: ``linear_imputation``'s relative defect tolerance.
        max_iter: ``linear_imputation``'s iteration cap (None: its default).

    Returns:
        (N,C,H,W) imputed images, dtype of ``images``.

    Raises:
        TypeError: as ``linear_imputation``.
        ValueError: as ``linear_imputation``; also a ``noise`` that is not one number or one per channel,
            or is negative or not finite.
    """
    filled = linear_imputation(images, removed, tol=tol, max_iter=max_iter)
    scale = noise_scale(noise, images.shape[1], images.device, images.dtype)
    if not bool((scale > 0).any()):
        return filled
    return filled + noise_field(images.shape, scale, seed) * removed[:, None]


__all__ = ["DIRECT_MAX", "ROAD_NOISE", "ROAD_TOL", "SOLVERS", "linear_imputation", "road_impute"]
