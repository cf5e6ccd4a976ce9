"""DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022, "Towards better understanding attribution
methods"): wrappers of a trained classifier that make the evidence's place in an N x N grid known.

Why: on a plain grid (the Grid Pointing Game) a cell's logit may *legitimately* use other cells
(context through the receptive field), so attribution outside the target cell is not provably
wrong. The wrappers remove that doubt without retraining:

* :class:`DiFull` runs the feature extractor on every cell *separately* (one batched call over the
  B*N² cells) and stitches the per-cell feature maps into one grid feature map. The logits of cell p
  pool only p's block of that map, so they depend on p's pixels alone: the gradient of a cell's logit
  with respect to every other cell's pixels is exactly zero (in eval mode; in train mode BatchNorm's
  batch statistics would couple the cells), and any attribution outside the target cell is wrong.
* :class:`DiPart` runs the feature extractor on the *whole* grid (receptive fields cross cell
  borders) and pools only the target cell's part of the final feature map: partly disconnected.

Both models return logits (B, N²·K) laid out cell-major, ``index = cell * K + class`` (cells in
row-major order, 0 = top left); :meth:`GridWrapper.output_index` computes it and
:meth:`GridWrapper.cell_logits` gives (B, N², K). So a CAM method explains "class c in cell p" as
``camzoo.explain(wrapper, grids, method=..., target=wrapper.output_index(p, c))``. The stitched
(DiFull) or whole-grid (DiPart) final feature map passes through the identity module ``cam_hook``,
the wrappers' ``default_cam_layer``: methods hook it by default.

Which models: any whose logits are ``head(GAP(features(x)))`` (checked on a probe input when the
wrapper is built): camzoo models (features = the input of their ``cam_hook``, after ABN's/LFI-CAM's
attention; head = ``fc``), timm CNNs (``forward_features`` / ``forward_head``), other models through
``layer=`` (the module giving the final feature map; default: camzoo's detected final feature map)
with their last ``nn.Linear`` as the head, or any pair given as ``features=`` and ``head=``.
"""

from __future__ import annotations

import copy
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..inputs import model_in_channels
from ..methods.layers import detect_layer, get_layer
from ..modelutil import model_device, model_input_size, select_output
from .grids import _check_grid_size, cell_masks, grid_pointing_game, grid_targets


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


class LayerOutput(nn.Module):
    """``model``'s forward run only up to ``layer``; returns that layer's output (B,C,h,w).

    Why a hook that stops the pass: it works for any model whose final feature map is one module's
    output, without rewriting its forward; the layers after it (pooling, head) are not run.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        get_layer(model, layer)  # fails early with close-match hints
        self.model = model
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        found: dict[str, torch.Tensor] = {}

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            found["out"] = output
            raise _StopForward

        handle = get_layer(self.model, self.layer).register_forward_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "out" not in found:
            raise RuntimeError(f"layer {self.layer!r} was not called during the forward pass")
        out = found["out"]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ValueError(f"layer {self.layer!r} must output a (B,C,h,w) feature map; got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out


class _Call(nn.Module):
    """A callable (e.g. a bound method such as timm's ``forward_features``) as a module that keeps
    ``owner`` registered, so parameters, ``.to()`` and eval mode reach it."""

    def __init__(self, owner: nn.Module | None, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.owner = owner
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def _last_linear(model: nn.Module) -> nn.Linear | None:
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        found = getter()
        if isinstance(found, nn.Linear):
            return found
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def split_classifier(
    model: nn.Module, layer: str | None = None, features: Callable | None = None, head: Callable | None = None,
    probe_size: int = 32,
) -> tuple[nn.Module, nn.Module]:
    """(features, head) with ``model(x) == head(features(x).mean((2,3)))``; see the module docstring.

    Rules, first match wins: explicit ``features``/``head``; ``layer`` (with the model's last Linear
    unless ``head`` is given); a camzoo model (``cam_hook`` + ``fc``); a timm model
    (``forward_features`` + ``forward_head``); otherwise camzoo's detected final feature map and the
    last Linear. Callables are wrapped as modules so the pair is hookable and moves with the model.
    """
    if features is not None or layer is not None:
        if features is not None:
            feats = features if isinstance(features, nn.Module) else _Call(model, features)
        else:
            feats = LayerOutput(model, layer)  # type: ignore[arg-type]
    elif hasattr(model, "cam_hook") and isinstance(getattr(model, "fc", None), nn.Linear):
        feats = LayerOutput(model, "cam_hook")
        head = head if head is not None else model.fc
    elif callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        feats = _Call(model, model.forward_features)
        if head is None:
            head = _Call(model, lambda pooled: model.forward_head(pooled[:, :, None, None]))
    else:
        probe = torch.zeros(1, model_in_channels(model), probe_size, probe_size, device=model_device(model))
        feats = LayerOutput(model, detect_layer(model, probe))
    if head is None:
        head = _last_linear(model)
        if head is None:
            raise ValueError(f"{type(model).__name__} has no nn.Linear classifier; pass head= (pooled (B,C) -> logits)")
    heads = head if isinstance(head, nn.Module) else _Call(None, head)
    return feats, heads


class GridWrapper(nn.Module):
    """Shared part of :class:`DiFull` and :class:`DiPart`: the cell-wise pooling head and its checks.

    Args:
        model: the trained classifier (shared, not copied: the wrapper sees its weights).
        grid_size: N, cells per side (>= 2).
        layer / features / head: how to split the model (see :func:`split_classifier`).
        cell_size: side of one cell for the probe check (default: the model's input size, else 32).
        verify: check ``model(x) == head(GAP(features(x)))`` on a seeded probe; a model whose logits
            are not of that form cannot be wrapped (its per-cell logits would not be the model's).
    """

    default_cam_layer = "cam_hook"
    disconnection = ""

    def __init__(
        self, model: nn.Module, grid_size: int = 2, *, layer: str | None = None, features: Callable | None = None,
        head: Callable | None = None, cell_size: int | None = None, verify: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
            raise ValueError(f"grid_size must be an int >= 2 (a grid of N x N cells); got {grid_size!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        size = cell_size or (model_input_size(model) or (32, 32))[-1]
        self.grid_size = grid_size
        self.features, self.head = split_classifier(model, layer, features, head, probe_size=size)
        self.cam_hook = nn.Identity()
        if verify:
            self.base_classes = self._verify(model, size)
        else:
            self.base_classes = int(getattr(model, "num_classes", 0)) or self._verify(model, size, check=False)
        self.num_classes = grid_size * grid_size * self.base_classes
        cfg = copy.deepcopy(dict(getattr(model, "pretrained_cfg", None) or {}))
        cfg.pop("label_names", None)
        cfg["input_size"] = (3, grid_size * size, grid_size * size)
        self.pretrained_cfg = cfg
        names = list(getattr(model, "class_names", None) or cfg.get("label_names") or range(self.base_classes))
        self.class_names = [f"{cell}:{name}" for cell in range(grid_size * grid_size) for name in names]

    def _verify(self, model: nn.Module, size: int, check: bool = True) -> int:
        was_training = [(m, m.training) for m in self.modules()] + [(m, m.training) for m in model.modules()]
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(2, model_in_channels(model), size, size, generator=generator).to(model_device(model))
        problem = ""
        try:
            self.eval()
            model.eval()
            with torch.no_grad():
                expected = select_output(model(probe))  # read as camzoo.explain reads it
                try:
                    got = self.head(self.features(probe).mean(dim=(2, 3)))
                except RuntimeError as err:  # e.g. a head that expects flattened, not pooled, features
                    got, problem = None, f" (the head failed on pooled features: {err})"
        finally:
            for module, flag in was_training:
                module.training = flag
        if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
            raise ValueError(f"the model must return (B, K) logits; got {getattr(expected, 'shape', type(expected))}")
        if check and (got is None or got.shape != expected.shape
                      or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4)):
            raise ValueError(
                f"{type(model).__name__}'s logits are not head(global-average-pool(features)) with the split "
                f"camzoo found ({type(self.features).__name__} -> {type(self.head).__name__}){problem}; pass layer= "
                "(the module giving the final feature map) and/or features= and head= explicitly"
            )
        return int(expected.shape[1])

    # --- layout -----------------------------------------------------------------------------
    def output_index(self, cell: int | torch.Tensor, cls: int | torch.Tensor) -> torch.Tensor:
        """Index into the (B, N²·K) logits of class ``cls`` in cell ``cell`` (row-major): cell*K + cls."""
        cell_t, cls_t = torch.as_tensor(cell).long(), torch.as_tensor(cls).long()
        cells = self.grid_size * self.grid_size
        if bool(((cell_t < 0) | (cell_t >= cells)).any()) or bool(((cls_t < 0) | (cls_t >= self.base_classes)).any()):
            raise ValueError(f"cell must be in [0, {cells}) and class in [0, {self.base_classes})")
        return cell_t * self.base_classes + cls_t

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects grid images (B,C,H,W); got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        n = self.grid_size
        if x.shape[-2] % n or x.shape[-1] % n:
            raise ValueError(f"{type(self).__name__}: the grid's height and width {tuple(x.shape[-2:])} must be "
                             f"multiples of grid_size={n}")

    def grid_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def cell_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N², K): the model's logits of every cell, each pooling only its block of the feature map."""
        self._check(x)
        n = self.grid_size
        fmap = self.cam_hook(self.grid_features(x))
        batch, channels, height, width = fmap.shape
        if height % n or width % n:
            raise ValueError(
                f"{type(self).__name__}: the final feature map is {height}x{width}, not divisible into "
                f"{n}x{n} cell blocks; use cells whose side is a multiple of the model's output stride"
            )
        pooled = fmap.reshape(batch, channels, n, height // n, n, width // n).mean(dim=(3, 5))  # (B,C,N,N)
        per_cell = pooled.permute(0, 2, 3, 1).reshape(batch * n * n, channels)
        return self.head(per_cell).reshape(batch, n * n, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N²·K) logits, index cell*K + class (see :meth:`output_index`)."""
        return self.cell_logits(x).flatten(1)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, base_classes={self.base_classes}"


class DiFull(GridWrapper):
    """Fully disconnected: every cell through the feature extractor on its own; maps stitched."""

    disconnection = "full"

    def grid_features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.grid_size
        batch, channels, height, width = x.shape
        h, w = height // n, width // n
        cells = x.reshape(batch, channels, n, h, n, w).permute(0, 2, 4, 1, 3, 5).reshape(batch * n * n, channels, h, w)
        f = self.features(cells)
        fc, fh, fw = f.shape[1:]
        return f.reshape(batch, n, n, fc, fh, fw).permute(0, 3, 1, 4, 2, 5).reshape(batch, fc, n * fh, n * fw)


class DiPart(GridWrapper):
    """Partly disconnected: features of the whole grid, each cell's logits pool only its block."""

    disconnection = "part"

    def grid_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def grid_wrapper(kind: str, model: nn.Module, grid_size: int = 2, **options: Any) -> GridWrapper:
    """``"difull"`` or ``"dipart"`` -> the wrapper of ``model``.

    Args:
        kind: "difull" (:class:`DiFull`, every cell through the feature extractor on its own) or "dipart"
            (:class:`DiPart`, features of the whole grid).
        model: the trained classifier (shared, not copied).
        grid_size: N, cells per side (an int >= 2).
        **options: keyword arguments of :class:`GridWrapper`: ``layer``, ``features``, ``head``,
            ``cell_size``, ``verify``.

    Returns:
        The :class:`DiFull` or :class:`DiPart` module; its logits are (B, N²·K), index cell*K + class.

    Raises:
        ValueError: an unknown ``kind``; ``grid_size`` not an int >= 2; an unknown ``layer``; a model that
            cannot be split into ``head(GAP(features(x)))`` (no nn.Linear head, or logits that differ from
            that form on the probe).
        TypeError: ``model`` is not a torch.nn.Module; an unknown keyword in ``options``.
    """
    kinds: dict[str, type[GridWrapper]] = {"difull": DiFull, "dipart": DiPart}
    if kind not in kinds:
        raise ValueError(f"unknown grid wrapper {kind!r}; choose one of {', '.join(kinds)}")
    return kinds[kind](model, grid_size, **options)


GAMES = ("gridpg", "difull", "dipart")


def play_grid_game(model: nn.Module, grids: dict, explain: Any, game: str = "gridpg",
                   cells: Sequence[int] | None = None, *, layer: Any = None, batch_size: int | None = None,
                   method_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Explain every (grid, cell) job of ``grids`` (``build_grids``) and score it: one metric cell.

    game: "gridpg" (the model on the whole grid), "difull" or "dipart" (the model wrapped,
    :mod:`camzoo.metrics.grid_models`; the target is class c *in cell p*). explain: a CAM method
    name, or ``explain(model, images, targets) -> maps (B,H,W)``. With a method name the score follows
    the paper exactly: the raw map (``Explanation.raw``) upsampled bilinearly to the grid's size, its
    positive part; ``score_raw`` is the same at the map's own resolution (None when its sides are
    not multiples of N). A callable's maps are scored as given (``score_raw`` None). The target cell's
    mask goes to ``camzoo.explain`` as ground truth, so the ``oracle`` control runs (others ignore it).

    Returns ``score`` (mean), ``per_image`` (T,), ``score_raw``, ``per_image_raw``, ``jobs``
    (``grid_targets``), ``chance``, ``game``, ``grid_size`` and ``num_grids``. The name of the table
    column is ``f"{game}_{N}x{N}"`` (``gridpg_2x2``, ``difull_2x2``, ...).

    Args:
        model: the trained classifier (wrapped, not modified, for "difull"/"dipart").
        grids: the dict :func:`build_grids` or :func:`make_grids` returns (``images`` and ``labels``).
        explain: a CAM method name, or ``explain(model, images, targets) -> maps (B,H,W)``.
        game: "gridpg", "difull" or "dipart".
        cells: which cells of each grid to explain (see :func:`grid_targets`); None: all of them.
        layer: with a method name, the layer it explains (None: the method's default; the wrappers'
            ``cam_hook`` for "difull"/"dipart").
        batch_size: with a method name, images per pass (None: the method's default).
        method_options: with a method name, its options (checked against the method's signature).

    Returns:
        ``score``: mean Grid Pointing Game score (0-d tensor); ``per_image``: (T,) one score per job;
        ``score_raw`` and ``per_image_raw``: the same at the raw map's resolution, or None;
        ``jobs``: :func:`grid_targets`' dict; ``chance``: 1/N²; ``game``: str; ``grid_size``: int N;
        ``num_grids``: int G.

    Raises:
        ValueError: an unknown ``game``; ``grids`` without ``images``/``labels`` or whose labels are
            not (G,N²) with N >= 2; invalid ``cells``; a model the DiFull/DiPart wrappers cannot split
            (see :func:`~camzoo.metrics.grid_models.grid_wrapper`); maps the score rejects.
        TypeError: ``explain`` is neither a method name nor a callable.
    """
    if game not in GAMES:
        raise ValueError(f"game must be one of {GAMES}; got {game!r}")
    if not isinstance(grids, Mapping) or "images" not in grids or "labels" not in grids:
        raise ValueError("grids must be the dict build_grids / make_grids returns (with 'images' and 'labels')")
    images, labels = grids["images"], grids["labels"]
    n = _check_grid_size(int(round(labels.shape[1] ** 0.5)))
    if n * n != labels.shape[1]:
        raise ValueError(f"grids['labels'] must be (G, N²); got {tuple(labels.shape)}")
    jobs = grid_targets(labels, cells)
    net = model if game == "gridpg" else grid_wrapper(game, model, n, cell_size=images.shape[-1] // n)
    targets = jobs["target"] if game == "gridpg" else net.output_index(jobs["cell"], jobs["target"])
    inputs = images[jobs["grid"]]
    size = (int(images.shape[-2]), int(images.shape[-1]))
    raw_result = None
    if isinstance(explain, str):
        from ..methods import run_method

        truth = {"mask": cell_masks(jobs["cell"], n, size[0], size[1], device=inputs.device)}  # for `oracle`
        explanation = run_method(net, inputs, explain, targets, layer, batch_size, method_options, truth)
        raw = explanation.raw
        result = grid_pointing_game(raw, jobs["cell"], n, size=size)
        if raw.shape[-2] % n == 0 and raw.shape[-1] % n == 0:
            raw_result = grid_pointing_game(raw, jobs["cell"], n)
    elif callable(explain):
        result = grid_pointing_game(explain(net, inputs, targets), jobs["cell"], n, size=size)
    else:
        raise TypeError(f"explain must be a method name or a callable; got {type(explain).__name__}")
    return {"score": result["gridpg"], "per_image": result["per_image"],
            "score_raw": None if raw_result is None else raw_result["gridpg"],
            "per_image_raw": None if raw_result is None else raw_result["per_image"],
            "jobs": jobs, "chance": 1.0 / (n * n), "game": game, "grid_size": n, "num_grids": int(labels.shape[0])}


__all__: Sequence[str] = ["GAMES", "DiFull", "DiPart", "GridWrapper", "LayerOutput", "grid_wrapper", "play_grid_game",
                          "split_classifier"]
