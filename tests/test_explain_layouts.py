"""Transformers and other layouts: tokens and channels-last outputs reach the methods as (B,C,h,w),
the automatic layer is the one the CAM literature uses per family, and a signal placed at one patch
of the explained layer lands at that patch of the map (random weights, tiny configs, 32-64 px)."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

import camzoo
from camzoo.maps import minmax_normalise

TINY_VIT = dict(pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5)

# family -> (builder, input side, automatic layer, layout of that layer's output, prefix tokens)
FAMILIES = {
    "timm_vit": (lambda: timm.create_model("vit_tiny_patch16_224", **TINY_VIT), 32, "blocks.1.norm1", "tokens", 1),
    "timm_deit_distilled": (lambda: timm.create_model("deit_tiny_distilled_patch16_224", **TINY_VIT), 32,
                            "blocks.1.norm1", "tokens", 2),
    "timm_vit_registers": (lambda: timm.create_model("vit_tiny_patch16_224", reg_tokens=4, **TINY_VIT), 32,
                           "blocks.1.norm1", "tokens", 5),
    "timm_swin": (lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                                            window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 1),
                                            num_classes=5), 32, "layers.1.blocks.0.norm1", "nhwc", 0),
    "timm_mixer": (lambda: MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=32, num_classes=5), 32,
                   "norm", "tokens", 0),
    "timm_resmlp": (lambda: MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=32, num_classes=5,
                                     block_layer=ResBlock, norm_layer=Affine, stem_norm=False, mlp_ratio=4), 32,
                    "norm", "tokens", 0),
    "timm_convnext": (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=5), 96, "stages.3",
                      "nchw", 0),
    "timm_efficientnet": (lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=5), 96, "bn2",
                          "nchw", 0),
    "timm_resnet": (lambda: timm.create_model("resnet10t", pretrained=False, num_classes=5), 96, "layer4", "nchw", 0),
    "torchvision_vit": (lambda: TorchvisionViT(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                               mlp_dim=64, num_classes=5), 32,
                        "encoder.layers.encoder_layer_1.ln_1", "tokens", 1),
    "torchvision_swin": (lambda: TorchvisionSwin(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1],
                                                 window_size=[4, 4], num_classes=5), 32, "features.3.0.norm1", "nhwc", 0),
    "torchvision_resnet": (lambda: torchvision.models.resnet18(num_classes=5), 96, "layer4", "nchw", 0),
    "torchvision_convnext": (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=5),
                             64, "features", "nchw", 0),
    "torchvision_mobilenet": (lambda: torchvision.models.mobilenet_v3_small(num_classes=5), 96, "features", "nchw", 0),
}
GRID_CELL = (1, 2)  # row, column of the injected signal: off the diagonal, so a transpose shows


def _build(family: str) -> tuple[nn.Module, int, str, str, int]:
    builder, side, layer, layout, prefix = FAMILIES[family]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return builder().eval(), side, layer, layout, prefix


def test_at_least_twelve_families():
    assert len(FAMILIES) >= 12
    assert {f.split("_")[0] for f in FAMILIES} == {"timm", "torchvision"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_layer_shape_and_finite(family):
    model, side, layer, _, _ = _build(family)
    exp = camzoo.explain(model, torch.randn(2, 3, side, side), method="gradcam")
    assert exp.layer == layer
    assert exp.maps.shape == (2, side, side) and exp.maps.dtype == torch.float32
    assert torch.isfinite(exp.maps).all() and torch.isfinite(exp.raw).all()
    assert exp.raw.shape[-2] * exp.raw.shape[-1] > 1
    assert all(not m._forward_hooks for m in model.modules())


def _inject(model: nn.Module, layer: str, layout: str, prefix: int):
    """A hook that makes the layer's output zero except for one grid cell; prefix tokens get a large
    value (they must be dropped, not read as patches)."""
    module = dict(model.named_modules())[layer]

    def hook(mod, inputs, output):
        signal = torch.zeros_like(output)
        row, col = GRID_CELL
        if layout == "tokens":
            width = round((output.shape[1] - prefix) ** 0.5)
            signal[:, prefix + row * width + col] = 5.0
            signal[:, :prefix] = 100.0
        elif layout == "nhwc":
            signal[:, row, col, :] = 5.0
        else:
            signal[:, :, row, col] = 5.0
        return signal

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patch_signal_lands_in_its_patch(family):
    model, side, layer, layout, prefix = _build(family)
    handle = _inject(model, layer, layout, prefix)
    try:
        exp = camzoo.explain(model, torch.randn(1, 3, side, side), method="eigencam")
    finally:
        handle.remove()
    height, width = exp.raw.shape[-2:]
    peak = int(exp.raw[0].flatten().argmax())
    assert (peak // width, peak % width) == GRID_CELL
    row = int(exp.maps[0].amax(dim=1).argmax())  # the upsampled map peaks inside that cell's pixels
    col = int(exp.maps[0].amax(dim=0).argmax())
    cell_h, cell_w = side // height, side // width
    assert row // cell_h == GRID_CELL[0] and col // cell_w == GRID_CELL[1]


class TinyTokenModel(nn.Module):
    """A hand-built ViT: each token is its patch's mean intensity, a class token in front, a head on
    the mean of the patch tokens with positive weights for class 0. A bright patch is the evidence."""

    num_prefix_tokens = 1

    def __init__(self, patch: int = 8, dim: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch, bias=False)
        self.patch_embed.patch_size = (patch, patch)
        nn.init.constant_(self.patch_embed.weight, 1.0 / (3 * patch * patch))
        self.cls_token = nn.Parameter(torch.full((1, 1, dim), 50.0))
        block = nn.Module()
        block.norm1 = nn.Identity()
        self.blocks = nn.Sequential(block)
        self.head = nn.Linear(dim, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.stack([torch.ones(dim), -torch.ones(dim)]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.blocks[0].norm1(tokens)
        return self.head(tokens[:, 1:].mean(1))


def test_hand_built_token_model_finds_the_bright_patch():
    model = TinyTokenModel().eval()
    image = torch.zeros(1, 3, 32, 48)  # a 4x6 grid: non-square, so rows and columns cannot swap
    image[:, :, 8:16, 16:24] = 1.0  # patch (1, 2)
    exp = camzoo.explain(model, image, method="gradcam", target=0)
    assert exp.layer == "blocks.0.norm1" and exp.raw.shape == (1, 4, 6)
    assert (exp.raw[0] > 0).nonzero().tolist() == [[1, 2]]
    assert exp.maps[0, 8:16, 16:24].mean() > 0.5 > exp.maps[0, 24:, :].max()


def test_several_layers_fuse_by_the_documented_rule():
    model, side, _, _, _ = _build("timm_resnet")
    x = torch.randn(2, 3, side, side)
    fused = camzoo.explain(model, x, layer=["layer3", "layer4"])
    one = [camzoo.explain(model, x, layer=name).raw for name in ("layer3", "layer4")]
    size = one[0].shape[-2:]
    expected = (minmax_normalise(one[0]) + F.interpolate(minmax_normalise(one[1])[:, None], size=size,
                                                         mode="bilinear", align_corners=False)[:, 0]) / 2
    assert fused.layer == "layer3+layer4" and fused.raw.shape == (2, *size)
    torch.testing.assert_close(fused.raw, expected, atol=1e-5, rtol=1e-5)
    assert fused.maps.shape == (2, side, side)


def test_user_reshape_for_an_unknown_layout():
    class Flat(nn.Module):
        """Emits (B, h*w, C) tokens but has no patch embedding camzoo could read the grid from."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, 4)
            self.tokens = nn.Identity()
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.tokens(self.conv(x).flatten(2).transpose(1, 2))
            return self.head(t.mean(1))

    model, x = Flat().eval(), torch.randn(1, 3, 16, 32)
    with pytest.raises(ValueError, match=r"layer 'tokens'.*\(1, 32, 8\).*layer=.*reshape="):
        camzoo.explain(model, x, layer="tokens")
    exp = camzoo.explain(model, x, layer="tokens", reshape=lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, 4, 8))
    assert exp.raw.shape == (1, 4, 8) and exp.maps.shape == (1, 16, 32)
    with pytest.raises(ValueError, match="reshape= must turn layer 'tokens'.*returned \\(1, 32, 8\\)"):
        camzoo.explain(model, x, layer="tokens", reshape=lambda t: t)


def test_unreshapeable_layers_say_how_to_fix():
    model = timm.create_model("vit_tiny_patch16_224", qk_norm=True, **TINY_VIT).eval()
    x = torch.randn(1, 3, 32, 32)
    # the trial's bug: attention internals (B, heads, tokens, head_dim) read as an image
    with pytest.raises(ValueError, match=r"layer 'blocks.1.attn.k_norm'.*\(1, 3, 17, 64\).*layer=.*reshape="):
        camzoo.explain(model, x, layer="blocks.1.attn.k_norm")
    with pytest.raises(ValueError, match=r"layer 'fc_norm' outputs shape \(1, 192\).*layer=.*reshape="):
        camzoo.explain(model, x, layer="fc_norm", method="eigencam")
