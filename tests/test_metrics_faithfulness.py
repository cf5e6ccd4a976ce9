"""MoRF / LeRF / SRG, ROAD's linear imputation and substrate agreement, against independent references:
camzoo's deletion (consistency), slow per-image loops, closed forms, scipy's spsolve and kendalltau."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import scipy.stats
import torch
from torch import nn

from camzoo.metrics.causal import deletion_insertion, rise_blur
from camzoo.metrics.faithfulness import morf_lerf, substrate_agreement
from camzoo.metrics.imputation import DIRECT_MAX, linear_imputation, road_impute

SIZE = 16
REGION = (slice(3, 9), slice(5, 11))  # 6 x 6 = 36 pixels of 256
AREA = 36
SHARPNESS = 5.0


class TinyNet(nn.Module):
    """A small random conv net: smooth, non-trivial probabilities for any input."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.tanh(self.conv(x))).flatten(1)) * 3


class RegionModel(nn.Module):
    """Logits [L * s, 0] with s = mean of channel 0 over REGION: class 0's probability is sigmoid(L*s)."""

    def __init__(self) -> None:
        super().__init__()
        region = torch.zeros(SIZE, SIZE)
        region[REGION] = 1
        self.register_buffer("region", region)
        self.unused = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        share = (x[:, 0] * self.region).flatten(1).sum(1) / AREA
        return torch.stack([SHARPNESS * share, torch.zeros_like(share)], 1)


class Recorder(nn.Module):
    """Returns fixed-shape logits and keeps every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3, 2))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.extend(x.clone())
        return x.mean((2, 3)) @ self.weight


def random_batch(batch: int = 2, size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    maps = torch.rand(batch, size, size, generator=generator)  # continuous: no ties
    return images, maps


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def trapezoid(curve) -> float:
    curve = np.asarray(curve, dtype=np.float64)
    return float(np.trapezoid(curve, dx=1 / (len(curve) - 1)))


# ----------------------------------------------------------------- independent references


def neighbour_system(image: np.ndarray, removed: np.ndarray) -> tuple:
    """ROAD's system built pixel by pixel (float64): for each removed pixel, its row of (I - P) over the
    removed pixels, the known neighbours' weighted sum (rhs, per channel) and its total weight."""
    channels, height, width = image.shape
    index = -np.ones((height, width), dtype=int)
    index[removed] = np.arange(removed.sum())
    n = int(removed.sum())
    matrix = scipy.sparse.lil_matrix((n, n))
    rhs = np.zeros((n, channels))
    totals = np.zeros(n)
    for i, j in zip(*np.nonzero(removed)):
        row = index[i, j]
        for di, dj in itertools.product((-1, 0, 1), repeat=2):
            ni, nj = i + di, j + dj
            if (di, dj) == (0, 0) or not (0 <= ni < height and 0 <= nj < width):
                continue
            weight = 1 / 12 if di and dj else 1 / 6
            totals[row] += weight
            if removed[ni, nj]:
                matrix[row, index[ni, nj]] -= weight
            else:
                rhs[row] += weight * image[:, ni, nj]
        matrix[row, row] = totals[row]
    return matrix.tocsc(), rhs, totals


def spsolve_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's system solved exactly (float64): each removed pixel equals the weighted mean of its
    in-image 8-neighbours (1/6 direct, 1/12 diagonal), known pixels fixed."""
    matrix, rhs, _ = neighbour_system(image, removed)
    solution = scipy.sparse.linalg.spsolve(matrix, rhs).reshape(len(rhs), image.shape[0])
    out = image.copy()
    out[:, removed] = solution.T
    return out


def exit_time_bound(removed: np.ndarray) -> float:
    """max_i of (I - P)^{-1} 1 over removed pixels, P = neighbour averaging restricted to them.

    If every removed pixel is within `d` of its neighbours' weighted mean, the error against the exact
    solution is at most d times this (a maximum-principle bound); it turns the solver's stopping rule
    into an error tolerance for the tests.
    """
    matrix, _, totals = neighbour_system(np.zeros((1, *removed.shape)), removed)
    return float(scipy.sparse.linalg.spsolve(matrix, totals).max())


def slow_curve(model: nn.Module, image: torch.Tensor, saliency: torch.Tensor, target: int, steps: int,
               substrate: str, least_first: bool, fraction: float = 1.0) -> list[float]:
    """One image, one input at a time: pixels sorted by numpy, replaced by the substrate."""
    _, height, width = image.shape
    values = saliency.flatten().numpy()
    order = np.argsort(values if least_first else -values, kind="stable")
    evaluated = round(fraction * height * width)
    x = image.numpy().astype(np.float64)
    if substrate == "zeros":
        fill = np.zeros_like(x)
    elif substrate == "mean":
        fill = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    elif substrate == "blur":
        fill = rise_blur(image[None])[0].numpy()
    curve = []
    for k in range(steps + 1):
        count = k * evaluated // steps
        rows, cols = np.unravel_index(order[:count], (height, width))
        removed = np.zeros((height, width), dtype=bool)
        removed[rows, cols] = True
        if substrate == "road":
            perturbed = spsolve_imputation(x, removed) if 0 < count < height * width else (
                x if count == 0 else np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape))
        else:
            perturbed = np.where(removed[None], fill, x)
        with torch.no_grad():
            logits = model(torch.tensor(perturbed, dtype=torch.float32)[None])
        curve.append(float(logits.softmax(1)[0, target]))
    return curve


# ----------------------------------------------------------------- MoRF / LeRF


def mean_substrate(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3), keepdim=True).expand_as(x)


@pytest.mark.parametrize("name,deletion_substrate", [
    ("zeros", 0.0), ("mean", mean_substrate), ("blur", rise_blur), (mean_substrate, mean_substrate),
])
def test_morf_is_camzoo_deletion_with_the_same_substrate(name, deletion_substrate):
    model, (images, maps), targets = TinyNet(), random_batch(3), [0, 1, 2]
    result = morf_lerf(model, images, maps, targets, substrate=name, steps=8, chunk_size=5)
    reference = deletion_insertion(model, images, maps, targets, steps=8, substrate=deletion_substrate,
                                   modes=("deletion",))
    torch.testing.assert_close(result["morf_curve"], reference["deletion_curve"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result["morf"], reference["deletion"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result["fraction"], reference["fraction"])


@pytest.mark.parametrize("substrate", ["zeros", "mean", "blur"])
def test_lerf_and_morf_match_a_slow_per_image_loop(substrate):
    model, (images, maps), targets = TinyNet(), random_batch(2, seed=1), [2, 0]
    result = morf_lerf(model, images, maps, targets, substrate=substrate, steps=8, chunk_size=3)
    for b in range(2):
        lerf = slow_curve(model, images[b], maps[b], targets[b], 8, substrate, least_first=True)
        morf = slow_curve(model, images[b], maps[b], targets[b], 8, substrate, least_first=False)
        np.testing.assert_allclose(result["lerf_curve"][b].numpy(), lerf, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result["morf_curve"][b].numpy(), morf, rtol=1e-5, atol=1e-6)
        assert result["lerf"][b].item() == pytest.approx(trapezoid(lerf), abs=1e-6)
        assert result["srg"][b].item() == pytest.approx(trapezoid(lerf) - trapezoid(morf), abs=1e-6)


def test_road_substrate_matches_spsolve_imputation_per_input():
    model, (images, maps), targets = TinyNet(), random_batch(2, size=10, seed=2), [1, 0]
    result = morf_lerf(model, images, maps, targets, substrate="road", road_noise=0.0, steps=5,
                       chunk_size=4, road_tol=1e-7)
    for b in range(2):
        for least_first, key in ((False, "morf_curve"), (True, "lerf_curve")):
            reference = slow_curve(model, images[b], maps[b], targets[b], 5, "road", least_first)
            np.testing.assert_allclose(result[key][b].numpy(), reference, atol=1e-5)


def region_batch() -> torch.Tensor:
    """Channel 0 is 1 on REGION and 0 elsewhere (so its mean is AREA / SIZE**2); other channels noise."""
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    images[:, 0] = 0
    images[:, 0, REGION[0], REGION[1]] = 1
    return images


def region_maps(complement: bool = False) -> torch.Tensor:
    maps = torch.zeros(2, SIZE, SIZE)
    maps[:, REGION[0], REGION[1]] = 1
    return 1 - maps if complement else maps


@pytest.mark.parametrize("substrate,fill", [("zeros", 0.0), ("mean", AREA / SIZE**2)])
def test_srg_of_the_region_and_its_complement_in_closed_form(substrate, fill):
    steps = 8  # 32 px per step
    pixels = SIZE * SIZE

    def share(region_removed: int) -> float:  # channel-0 mean over the region
        return ((AREA - region_removed) + region_removed * fill) / AREA

    region_first = [sigmoid(SHARPNESS * share(min(AREA, 32 * k))) for k in range(steps + 1)]
    region_last = [sigmoid(SHARPNESS * share(max(0, 32 * k - (pixels - AREA)))) for k in range(steps + 1)]
    good = morf_lerf(RegionModel(), region_batch(), region_maps(), [0, 0], substrate=substrate, steps=steps)
    bad = morf_lerf(RegionModel(), region_batch(), region_maps(True), [0, 0], substrate=substrate, steps=steps)
    torch.testing.assert_close(good["morf_curve"], torch.tensor([region_first] * 2))
    torch.testing.assert_close(good["lerf_curve"], torch.tensor([region_last] * 2))
    expected = trapezoid(region_last) - trapezoid(region_first)
    assert expected > 0.2
    torch.testing.assert_close(good["srg"], torch.full((2,), expected))
    torch.testing.assert_close(bad["srg"], torch.full((2,), -expected))


@pytest.mark.parametrize("substrate", ["blur", "road"])
def test_srg_sign_of_the_region_and_its_complement(substrate):
    good = morf_lerf(RegionModel(), region_batch(), region_maps(), [0, 0], substrate=substrate, steps=8)
    bad = morf_lerf(RegionModel(), region_batch(), region_maps(True), [0, 0], substrate=substrate, steps=8)
    assert (good["srg"] > 0.1).all() and (bad["srg"] < -0.1).all()


@pytest.mark.parametrize("substrate", ["zeros", "blur", "road"])
def test_ties_are_broken_the_same_way_in_both_orders(substrate):
    model, (images, _), targets = TinyNet(), random_batch(2, seed=4), [0, 1]
    constant = morf_lerf(model, images, torch.zeros(2, SIZE, SIZE), targets, substrate=substrate, steps=8)
    torch.testing.assert_close(constant["lerf_curve"], constant["morf_curve"], rtol=0, atol=0)
    assert (constant["srg"] == 0).all()
    # a map with many ties (4 levels): negating it swaps MoRF and LeRF exactly
    tied = (torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 4).floor()
    plus = morf_lerf(model, images, tied, targets, substrate=substrate, steps=8)
    minus = morf_lerf(model, images, -tied, targets, substrate=substrate, steps=8)
    torch.testing.assert_close(minus["morf_curve"], plus["lerf_curve"], rtol=0, atol=0)
    torch.testing.assert_close(minus["srg"], -plus["srg"], rtol=0, atol=0)


@pytest.mark.parametrize("substrate", ["zeros", "mean", "blur"])
def test_substrates_are_what_the_docs_say(substrate):
    images, maps = random_batch(1, size=8, seed=6)
    recorder = Recorder()
    morf_lerf(recorder, images, maps, [0], substrate=substrate, steps=4, chunk_size=3)
    x = images[0].double().numpy()
    fills = {"zeros": np.zeros_like(x), "mean": np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape),
             "blur": rise_blur(images)[0].double().numpy()}
    order = np.argsort(-maps[0].flatten().numpy())
    expected = []
    for k in range(5):
        for chosen in (order[: 16 * k], order[::-1][: 16 * k]):
            removed = np.zeros(64, dtype=bool)
            removed[chosen] = True
            expected.append(np.where(removed.reshape(1, 8, 8), fills[substrate], x))
    assert len(recorder.seen) == 8  # 2 * steps: the original and the fully removed image are shared
    for want in expected:
        assert any(np.allclose(seen.double().numpy(), want, atol=1e-6) for seen in recorder.seen)


def test_partial_auc_covers_the_first_fraction_of_pixels():
    model, (images, maps), targets = TinyNet(), random_batch(2, seed=7), [1, 2]
    part = morf_lerf(model, images, maps, targets, substrate="mean", steps=4, fraction=0.5)
    full = morf_lerf(model, images, maps, targets, substrate="mean", steps=8)
    for key in ("morf", "lerf"):
        curve = full[f"{key}_curve"][:, :5]  # 32 px per step in both runs: the first 128 px
        torch.testing.assert_close(part[f"{key}_curve"], curve)
        expected = torch.tensor([trapezoid(c) for c in curve.numpy()])
        torch.testing.assert_close(part[key], expected)
    torch.testing.assert_close(part["fraction"], torch.tensor([0, 0.125, 0.25, 0.375, 0.5]))
    torch.testing.assert_close(part["srg"], part["lerf"] - part["morf"])


@pytest.mark.parametrize("substrate", ["blur", "road"])
def test_results_do_not_depend_on_chunk_size(substrate):
    model, (images, maps), targets = TinyNet(), random_batch(2, size=10, seed=8), [0, 2]
    runs = [morf_lerf(model, images, maps, targets, substrate=substrate, steps=4, chunk_size=c, seed=3)
            for c in (1, 5, 1000)]
    for run in runs[1:]:
        for key in ("morf_curve", "lerf_curve"):
            torch.testing.assert_close(run[key], runs[0][key], rtol=1e-5, atol=1e-5)


def test_model_mode_is_restored_and_no_gradients_are_taken():
    model = TinyNet().train()
    images, maps = random_batch(1)
    morf_lerf(model, images, maps, [0], steps=4)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------- ROAD imputation


def imputation_cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(9)
    scattered = torch.rand(9, 11, generator=generator) < 0.6  # touches the border
    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    disc = (yy - 11) ** 2 + (xx - 13) ** 2 < 10 ** 2  # one large hole: the slow case for iterations
    corner = torch.ones(12, 12, dtype=torch.bool)
    corner[0, 0] = False  # a single known pixel
    return [(torch.randn(2, 3, *m.shape, generator=generator), m.expand(2, *m.shape).clone())
            for m in (scattered, disc, corner)]


@pytest.mark.parametrize("solver", ["iterative", "direct", "default"])
@pytest.mark.parametrize("case", range(3))
def test_linear_imputation_matches_an_exact_sparse_solve(case, solver):
    images, removed = imputation_cases()[case]
    tol = 1e-6
    direct_max = {"iterative": 0, "direct": 10**6, "default": DIRECT_MAX}[solver]
    result = linear_imputation(images, removed, tol=tol, direct_max=direct_max,
                               solver="cg" if solver == "iterative" else "auto")  # auto: sparse LU on the CPU
    unknowns = int(removed[0].sum())
    # Tolerance of the iterative solver: it stops once every removed pixel is within tol * max|image|
    # of its neighbours' weighted mean; by the maximum principle the error is then at most that times
    # the largest expected exit time of the averaging walk (computed exactly), doubled for float32
    # drift of the recursive residual, plus float32 rounding of the stored values. The direct solver
    # has no tolerance: float32 rounding alone (the disc's 314 unknowns are the worst conditioned).
    if direct_max >= unknowns:
        bound = 2e-5 * images.abs().max().item()
    else:
        bound = 2 * tol * images.abs().max().item() * exit_time_bound(removed[0].numpy()) + 1e-6
    for b in range(2):
        exact = spsolve_imputation(images[b].double().numpy(), removed[b].numpy())
        error = np.abs(result[b].double().numpy() - exact).max()
        assert error <= bound
        assert error < 1e-4
    assert torch.equal(result[~removed[:, None].expand_as(images)], images[~removed[:, None].expand_as(images)])


def test_linear_imputation_solves_a_mixed_batch_as_each_image_alone():
    """Small holes go to the direct solver, large ones to the iterative one, in one call: each image
    must get what it gets alone (the split and the size-sorted groups put every result back)."""
    generator = torch.Generator().manual_seed(13)
    images = torch.randn(21, 3, 24, 24, generator=generator)
    order = torch.rand(21, 24 * 24, generator=generator).argsort(1).argsort(1)
    sizes = torch.tensor([0, 576, *torch.linspace(5, 500, 19).long().tolist()])  # none, all, 5..500 removed
    removed = (order < sizes[:, None]).view(21, 24, 24)
    together = linear_imputation(images, removed)
    for b in range(21):
        alone = linear_imputation(images[b:b + 1], removed[b:b + 1])
        torch.testing.assert_close(together[b:b + 1], alone, atol=1e-5, rtol=0)
    assert torch.equal(together[0], images[0])
    torch.testing.assert_close(together[1], images[1].mean((1, 2), keepdim=True).expand(3, 24, 24))


def test_linear_imputation_of_a_fully_removed_image_is_its_mean_colour():
    images = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(10))
    removed = torch.zeros(2, 6, 6, dtype=torch.bool)
    removed[0] = True  # image 0 fully removed, image 1 untouched
    result = linear_imputation(images, removed)
    torch.testing.assert_close(result[0], images[0].mean((1, 2), keepdim=True).expand(3, 6, 6))
    assert torch.equal(result[1], images[1])


def test_road_noise_is_seeded_gaussian_on_removed_pixels_only():
    generator = torch.Generator().manual_seed(12)
    images = torch.randn(2, 3, 16, 16, generator=generator)
    removed = torch.rand(2, 16, 16, generator=generator) < 0.6  # ~900 noisy values
    clean = linear_imputation(images, removed)
    noisy = road_impute(images, removed, noise=0.5, seed=1)
    residual = (noisy - clean) / 0.5
    inside = removed[:, None].expand_as(images)
    assert torch.equal(residual[~inside], torch.zeros_like(residual[~inside]))
    assert abs(residual[inside].std().item() - 1) < 0.1 and abs(residual[inside].mean().item()) < 0.1
    assert torch.equal(noisy, road_impute(images, removed, noise=0.5, seed=1))
    assert not torch.equal(noisy, road_impute(images, removed, noise=0.5, seed=2))
    per_channel = road_impute(images, removed, noise=[0.0, 0.5, 0.0], seed=1) - clean
    assert per_channel[:, 0].abs().max() == 0 and per_channel[:, 1].abs().max() > 0


def test_road_substrate_adds_the_noise_to_removed_pixels():
    images, maps = random_batch(1, size=8, seed=11)
    recorder = Recorder()
    morf_lerf(recorder, images, maps, [0], substrate="road", steps=2, road_noise=0.3)
    half = torch.zeros(64, dtype=torch.bool)
    half[torch.argsort(-maps[0].flatten(), stable=True)[:32]] = True
    clean = linear_imputation(images, half.view(1, 8, 8))
    matches = [seen for seen in recorder.seen if torch.equal(seen[:, ~half.view(8, 8)], images[0][:, ~half.view(8, 8)])
               and not torch.equal(seen, images[0])]
    assert matches, "the MoRF half-removed input was not seen"
    noise = (matches[0] - clean[0])[:, half.view(8, 8)]
    assert 0.15 < noise.std().item() < 0.45


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,message", [
    ({"substrate": "gaussian"}, "unknown substrate"),
    ({"substrate": 3}, "substrate must be"),
    ({"fraction": 0}, "fraction"),
    ({"fraction": -0.5}, "fraction"),
    ({"fraction": 1.5}, "fraction"),
    ({"fraction": float("nan")}, "fraction"),
    ({"fraction": True}, "fraction"),
    ({"steps": 0}, "steps"),
    ({"steps": 200, "fraction": 0.5}, "steps"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"substrate": "road", "road_noise": -0.1}, "noise"),
    ({"substrate": "road", "road_noise": [0.1, 0.1]}, "noise"),
    ({"substrate": lambda x: x[:, :1]}, "shaped like"),
])
def test_bad_arguments_fail_with_a_clear_message(kwargs, message):
    images, maps = random_batch(1)
    with pytest.raises(ValueError, match=message):
        morf_lerf(TinyNet(), images, maps, [0], **{"steps": 4, **kwargs})


def test_bad_imputation_inputs_fail_with_a_clear_message():
    images = torch.randn(1, 3, 4, 4)
    with pytest.raises(TypeError, match="bool"):
        linear_imputation(images, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(N,H,W\)"):
        linear_imputation(images, torch.zeros(1, 4, 5, dtype=torch.bool))


# ----------------------------------------------------------------- substrate agreement


def brute_force_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b by counting pairs: (C - D) / sqrt((n0 - ties_x) (n0 - ties_y))."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        ties_x += dx == 0
        ties_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    pairs = len(x) * (len(x) - 1) // 2
    return (concordant - discordant) / math.sqrt((pairs - ties_x) * (pairs - ties_y))


def test_substrate_agreement_is_kendalls_tau_b_for_every_pair():
    rng = np.random.default_rng(0)
    methods = [f"m{i}" for i in range(7)]
    raw = {s: rng.normal(size=7).round(1) for s in ("zeros", "mean", "blur", "road")}
    raw["road"][:3] = raw["road"][0]  # ties
    scores = {s: dict(zip(methods, v.tolist())) for s, v in raw.items()}
    scores["blur"] = dict(reversed(list(scores["blur"].items())))  # method order must not matter
    result = substrate_agreement(scores)
    assert len(result["pairs"]) == 6
    for (a, b), tau in result["pairs"].items():
        assert tau == pytest.approx(scipy.stats.kendalltau(raw[a], raw[b]).statistic, abs=1e-12)
        assert tau == pytest.approx(brute_force_tau_b(raw[a], raw[b]), abs=1e-12)
        i, j = result["substrates"].index(a), result["substrates"].index(b)
        assert result["matrix"][i][j] == result["matrix"][j][i] == tau
    assert result["mean_tau"] == pytest.approx(np.mean(list(result["pairs"].values())))
    assert all(result["matrix"][i][i] == 1 for i in range(4))


def test_substrate_agreement_on_hand_made_rankings():
    same = {"a": 0.9, "b": 0.5, "c": 0.1}
    result = substrate_agreement({"zeros": same, "mean": {"a": 3, "b": 2, "c": 1},
                                  "blur": {"a": 0.1, "b": 0.5, "c": 0.9}})
    assert result["pairs"][("zeros", "mean")] == pytest.approx(1)
    assert result["pairs"][("zeros", "blur")] == pytest.approx(-1)
    assert result["pairs"][("mean", "blur")] == pytest.approx(-1)
    assert result["mean_tau"] == pytest.approx(-1 / 3)
    assert result["rankings"]["zeros"] == ["a", "b", "c"] and result["rankings"]["blur"] == ["c", "b", "a"]
    lower = substrate_agreement({"zeros": same, "mean": same}, higher_is_better=False)
    assert lower["rankings"]["zeros"] == ["c", "b", "a"]
    constant = substrate_agreement({"zeros": same, "mean": same, "road": {"a": 1, "b": 1, "c": 1}})
    assert math.isnan(constant["pairs"][("zeros", "road")]) and constant["mean_tau"] == pytest.approx(1)


@pytest.mark.parametrize("scores,message", [
    ({"zeros": {"a": 1, "b": 2}}, "at least two substrates"),
    ({"zeros": {"a": 1}, "mean": {"a": 2}}, "at least two methods"),
    ({"zeros": {"a": 1, "b": 2}, "mean": {"a": 1, "c": 2}}, "same methods"),
    ({"zeros": {"a": 1, "b": 2}, "mean": {"a": 1, "b": float("nan")}}, "NaN"),
])
def test_substrate_agreement_rejects_bad_input(scores, message):
    with pytest.raises(ValueError, match=message):
        substrate_agreement(scores)
