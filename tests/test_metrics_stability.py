"""Stability: identical maps give 1, and every measure agrees with an independent implementation
(scikit-image SSIM, SciPy / pandas Spearman, NumPy Pearson, the official LFI-CAM IoU script's steps)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import scipy.stats
import torch
from skimage.metrics import structural_similarity

from camzoo.methods.base import upsample_and_normalise
from camzoo.metrics import lfi_script_maps, pairwise_stability, pearson, spearman, ssim, stability


def smooth_maps(batch: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    maps = scipy.ndimage.gaussian_filter(rng.random((batch, size, size)), sigma=(0, 3, 3))
    low = maps.min((1, 2), keepdims=True)
    return torch.from_numpy((maps - low) / (maps.max((1, 2), keepdims=True) - low))


def test_identical_maps_are_perfectly_stable():
    maps = smooth_maps(4, 24, seed=0).float()
    for compat in (False, True):
        result = stability(maps, maps.clone(), lfi_compat=compat)
        for name, values in result.items():
            if compat and name == "dice":  # the official Dice counts rows empty in both maps as 2
                assert bool((values >= 1).all()) and bool((values <= 2).all())
                continue
            torch.testing.assert_close(values, torch.ones(4), msg=f"{name} (lfi_compat={compat})")


def test_ssim_equals_scikit_image_with_data_range_one():
    a, b = smooth_maps(5, 32, seed=1), smooth_maps(5, 32, seed=2)
    b[0] = a[0] * 0.8 + 0.1  # a related pair too
    expected = [structural_similarity(x, y, data_range=1.0) for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(ssim(a, b).numpy(), expected, rtol=1e-5, atol=1e-6)
    noisy = torch.rand(3, 9, 11, dtype=torch.float64)  # not square, barely larger than the window
    other = torch.rand(3, 9, 11, dtype=torch.float64)
    expected = [structural_similarity(x, y, data_range=1.0) for x, y in zip(noisy.numpy(), other.numpy())]
    np.testing.assert_allclose(ssim(noisy, other).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_spearman_with_ties_equals_scipy_and_pandas():
    a = torch.round(smooth_maps(4, 16, seed=3) * 5) / 5  # few levels: many ties
    b = torch.round(smooth_maps(4, 16, seed=4) * 7) / 7
    b[1] = a[1].clone()
    b[1, :4] = 0.0
    ours = spearman(a, b).numpy()
    with_scipy = [scipy.stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a.numpy(), b.numpy())]
    with_pandas = [pd.Series(x.ravel()).corr(pd.Series(y.ravel()), method="spearman") for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(ours, with_scipy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, with_pandas, rtol=1e-5, atol=1e-6)


def test_pearson_equals_numpy():
    a, b = smooth_maps(4, 16, seed=5), smooth_maps(4, 16, seed=6)
    expected = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(pearson(a, b).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_iou_and_dice_by_hand():
    a = torch.zeros(1, 10, 10)
    b = torch.zeros(1, 10, 10)
    a[0, :4, :5] = 1.0  # 20 px
    b[0, 2:6, :5] = 0.5  # 20 px, 10 shared
    b[0, 0, 0] = 100 / 255  # exactly at the threshold: not above it, so not in the mask
    result = stability(a, b)
    assert float(result["iou"]) == pytest.approx(10 / 30)
    assert float(result["dice"]) == pytest.approx(2 * 10 / 40)
    assert float(stability(a, b, threshold=0.6)["iou"]) == 0.0  # b is empty above 0.6


def test_degenerate_maps_have_defined_values():
    zeros, constant, varied = torch.zeros(1, 12, 12), torch.full((1, 12, 12), 0.5), smooth_maps(1, 12, seed=7).float()
    both_zero = stability(zeros, zeros)
    assert {name: float(v) for name, v in both_zero.items()} == {
        "iou": 1.0, "dice": 1.0, "spearman": 1.0, "pearson": 1.0, "ssim": 1.0}
    one_constant = stability(constant, varied)
    assert float(one_constant["spearman"]) == 0.0 and float(one_constant["pearson"]) == 0.0
    assert float(stability(constant, zeros)["pearson"]) == 1.0  # both constant: nothing disagrees


def official_lfi_iou_dice(map_a: np.ndarray, map_b: np.ndarray, threshold: int = 100) -> tuple[float, float]:
    """The steps of the official LFI-CAM pipeline: map*255 written as an 8-bit PNG and read back as
    HxWx3, min-max stretched, np.uint8(256 * x) (wraps 256 to 0), '> threshold', then IoU/Dice summed
    over axes (1, 2) with 1e-6 smoothing and averaged over the remaining axis (rows)."""
    def saved(scoremap: np.ndarray) -> np.ndarray:
        png = np.clip(np.rint(scoremap * 255.0), 0, 255).astype(np.uint8)  # cv2.imwrite's conversion
        image = np.repeat(png[:, :, None], 3, axis=2).astype(np.float64)
        image = image - np.min(image)
        image = image / np.max(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns about the 256 -> 0 cast
            scaled = 256 * image
            return np.where(scaled >= 256, 0, scaled).astype(np.uint8)  # the x86 wrap, made explicit

    base = (saved(map_a) > threshold).astype(int)
    target = (saved(map_b) > threshold).astype(int)
    intersection = np.sum(np.abs(target * base), axis=(1, 2))
    mask_sum = np.sum(np.abs(base), axis=(1, 2)) + np.sum(np.abs(target), axis=(1, 2))
    union = mask_sum - intersection
    iou = (intersection + 1e-6) / (union + 1e-6)
    dice = 2 * (intersection + 1e-6) / (mask_sum + 1e-6)
    return float(iou.mean()), float(dice.mean())


def test_lfi_compat_reproduces_the_official_row_wise_script():
    a, b = smooth_maps(4, 20, seed=8).float(), smooth_maps(4, 20, seed=9).float()
    result = stability(a, b, lfi_compat=True)
    expected = np.array([official_lfi_iou_dice(x, y) for x, y in zip(a.numpy(), b.numpy())])
    np.testing.assert_allclose(result["iou"].numpy(), expected[:, 0], rtol=1e-5)
    np.testing.assert_allclose(result["dice"].numpy(), expected[:, 1], rtol=1e-5)
    assert not torch.allclose(result["iou"], stability(a, b)["iou"])  # it is a different number


def test_lfi_compat_wraps_the_brightest_pixel_to_zero():
    peak = torch.zeros(1, 8, 8)
    peak[0, 3, 3] = 1.0
    peak[0, 3, 4] = 0.8
    result = stability(peak, peak.clone(), lfi_compat=True)
    # only (3,4) survives the wrap; row 3 has it in both maps, the 7 other rows are empty in both
    torch.testing.assert_close(result["iou"], torch.ones(1))
    assert float(result["dice"]) == pytest.approx((7 * 2 + 1) / 8, rel=1e-6)  # empty rows count 2


def test_pairwise_stability_over_all_pairs():
    sets = [smooth_maps(3, 16, seed=s).float() for s in (10, 11, 12)]
    result = pairwise_stability(sets)
    assert result["pairs"] == [(0, 1), (0, 2), (1, 2)]
    for name in ("iou", "spearman", "ssim"):
        per_pair = torch.stack([stability(sets[i], sets[j])[name].mean() for i, j in result["pairs"]])
        torch.testing.assert_close(result["per_pair"][name], per_pair)
        torch.testing.assert_close(result["mean"][name], per_pair.mean())
        torch.testing.assert_close(result["std"][name], torch.tensor(np.std(per_pair.numpy()), dtype=torch.float32))
        assert result["per_image"][name].shape == (3, 3)


def test_bad_inputs_are_refused():
    a = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        stability(a, torch.rand(2, 8, 9))
    with pytest.raises(ValueError, match="NaN"):
        stability(a, a.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(torch.rand(1, 5, 5), torch.rand(1, 5, 5))
    with pytest.raises(ValueError, match="at least two"):
        pairwise_stability([a])


def test_lfi_script_maps_match_the_official_resize_and_8bit_round_trip():
    """What the official test loop writes: cv2.resize (INTER_LINEAR) of the raw attention, x255 as an
    8-bit PNG, read back, stretched, wrapped — then the row-wise script. Raw ABN-like attention that
    spans [0.2, 0.8] must not be re-normalised before the 8-bit step."""
    cv2 = pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(3)
    raw_a = 0.2 + 0.6 * torch.rand(4, 8, 8, generator=generator)
    raw_b = (raw_a + 0.15 * torch.rand(4, 8, 8, generator=generator)).clamp(0.2, 0.8)

    def official(raw: torch.Tensor) -> np.ndarray:
        resized = [cv2.resize(m.numpy(), (32, 32)) for m in raw]  # cv2's default: INTER_LINEAR
        return np.stack(resized)

    ours = stability(lfi_script_maps(raw_a, (32, 32), unit_scale=True),
                     lfi_script_maps(raw_b, (32, 32), unit_scale=True), lfi_compat=True)
    expected = np.array([official_lfi_iou_dice(x, y) for x, y in zip(official(raw_a), official(raw_b))])
    np.testing.assert_allclose(ours["iou"].numpy(), expected[:, 0], rtol=1e-5)
    np.testing.assert_allclose(ours["dice"].numpy(), expected[:, 1], rtol=1e-5)
    # the old path (normalise after upsampling) reads other maps, and gives another number
    renormalised = [upsample_and_normalise(raw, (32, 32)) for raw in (raw_a, raw_b)]
    assert not torch.allclose(stability(*renormalised, lfi_compat=True)["iou"], ours["iou"])


def test_lfi_script_maps_normalise_maps_without_a_fixed_scale_at_layer_resolution():
    raw = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(4)) * 37.0  # a Grad-CAM-like scale
    maps = lfi_script_maps(raw, (24, 24), unit_scale=False)
    assert 0.0 <= float(maps.amin()) < 0.1 and 0.9 < float(maps.amax()) <= 1.0  # bilinear keeps the range
    torch.testing.assert_close(maps, lfi_script_maps(raw / 37.0 * 2, (24, 24), unit_scale=False))
    with pytest.raises(ValueError, match=r"\(B,h,w\)"):
        lfi_script_maps(raw[0], (24, 24), unit_scale=True)
