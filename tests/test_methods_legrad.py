"""LeGrad against TorchCAM 0.5.0's ``LeGrad`` on small random-init vision transformers.

TorchCAM reads torchvision's ``VisionTransformer`` only, so the timm ViT's weights are copied into
a torchvision ViT of the same shape (the two compute the same function: same tokens, LayerNorm eps,
exact GELU, Q/K/V row order). TorchCAM's map is taken before its normalisation (``normalized=False``,
whose eps would otherwise move small maps by ~1e-5); both maps are min-max normalised per image and
must agree within 1e-4. The torchvision model itself is explained too (camzoo reads both families).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camzoo
from camzoo.methods import get_method
from camzoo.models import BaselineModel

DEPTH, SIZE, PATCH, CLASSES = 3, 32, 8, 5
TARGETS = [0, 1, 4, 2]


def tiny_vit(seed: int = 0, **options) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    options = {"img_size": SIZE, **options}
    return VisionTransformer(patch_size=PATCH, embed_dim=32, depth=DEPTH, num_heads=2, num_classes=CLASSES,
                             **options).eval()


def as_torchvision(vit: nn.Module) -> nn.Module:
    """A torchvision ViT holding the timm ViT's weights; its final LayerNorm is timm's ``norm``, or
    ``fc_norm`` for an average-pooled model (where ``norm`` is the identity)."""
    from torchvision.models.vision_transformer import VisionTransformer

    final = vit.fc_norm if isinstance(vit.norm, nn.Identity) else vit.norm
    weights = {"conv_proj": vit.patch_embed.proj, "encoder.ln": final, "heads.head": vit.head}
    for i, block in enumerate(vit.blocks):
        prefix = f"encoder.layers.encoder_layer_{i}."
        weights.update({prefix + "ln_1": block.norm1, prefix + "ln_2": block.norm2, prefix + "mlp.0": block.mlp.fc1,
                        prefix + "mlp.3": block.mlp.fc2, prefix + "self_attention.out_proj": block.attn.proj})
    state = {f"{name}.{kind}": getattr(module, kind) for name, module in weights.items() for kind in ("weight", "bias")}
    for i, block in enumerate(vit.blocks):
        state[f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"] = block.attn.qkv.weight
        state[f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias"] = block.attn.qkv.bias
    state.update({"class_token": vit.cls_token, "encoder.pos_embedding": vit.pos_embed})
    model = VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=DEPTH, num_heads=2, hidden_dim=32,
                              mlp_dim=128, num_classes=CLASSES).eval()
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return model


def torchcam_legrad(model: nn.Module, blocks: list[int], images: torch.Tensor, targets: list[int]) -> torch.Tensor:
    from torchcam.methods import LeGrad

    with LeGrad(model, [model.encoder.layers[i] for i in blocks]) as extractor:
        scores = model(images)
        return extractor(class_idx=targets, scores=scores, normalized=False)[0].detach()


def minmax(maps: torch.Tensor) -> torch.Tensor:
    low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(len(TARGETS), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("pool", ["token", "avg"])
@pytest.mark.parametrize("blocks", [None, 1, 2])
def test_legrad_equals_torchcam(images, pool, blocks):
    vit = tiny_vit(global_pool=pool, fc_norm=pool == "avg")
    reference_model = as_torchvision(vit)
    chosen = list(range(DEPTH))[-(blocks or DEPTH):]
    expected = minmax(torchcam_legrad(reference_model, chosen, images, TARGETS))
    options = {"blocks": blocks} if blocks else {}
    for model in (reference_model, vit):
        ours = camzoo.explain(model, images, method="legrad", target=TARGETS, method_options=options)
        assert ours.raw.shape == (len(TARGETS), SIZE // PATCH, SIZE // PATCH)
        assert (ours.raw.flatten(1).amax(1) > 0).all() and ours.raw.flatten(1).std(1).min() > 0, "maps must be non-trivial"
        assert (minmax(ours.raw) - expected).abs().max() <= 1e-4
    named = camzoo.explain(vit, images, method="legrad", target=TARGETS, layer=[f"blocks.{i}" for i in chosen])
    assert torch.equal(named.raw, ours.raw) and named.layer == "+".join(f"blocks.{i}" for i in chosen)
    inside = camzoo.explain(vit, images, method="legrad", target=TARGETS, layer=f"blocks.{DEPTH - 1}.norm1")
    assert inside.layer == f"blocks.{DEPTH - 1}"  # a module inside a block names that block


def test_legrad_is_batched_and_explains_the_predicted_class(images):
    vit = tiny_vit(seed=2)
    whole = camzoo.explain(vit, images, method="legrad")
    assert torch.equal(whole.targets, vit(images).argmax(1))
    one_by_one = camzoo.explain(vit, images, method="legrad", batch_size=1)
    assert torch.allclose(whole.raw, one_by_one.raw, rtol=1e-4, atol=1e-9)
    wide = tiny_vit(img_size=(SIZE, 2 * SIZE))  # a 4x8 patch grid, read row-major
    assert camzoo.explain(wide, torch.randn(2, 3, SIZE, 2 * SIZE), method="legrad").raw.shape == (2, 4, 8)


def test_legrad_leaves_the_model_as_it_was(images):
    """The fused-attention switch is restored and every hook removed, also when the call raises;
    grad mode and parameters' .grad are untouched."""
    vit = tiny_vit(reg_tokens=2)  # prefix tokens: class + 2 registers
    vit.blocks[1].attn.fused_attn = False  # a block already unfused stays so
    switches = [block.attn.fused_attn for block in vit.blocks]
    assert switches == [True, False, True]
    before = vit(images)
    with torch.no_grad():
        ours = camzoo.explain(vit, images, method="legrad", target=TARGETS)
        assert not torch.is_grad_enabled()
    assert ours.raw.flatten(1).std(1).min() > 0
    with pytest.raises(ValueError, match="out of range"):
        camzoo.explain(vit, images, method="legrad", target=CLASSES)
    assert [block.attn.fused_attn for block in vit.blocks] == switches and torch.is_grad_enabled()
    hooked = [m for m in vit.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooked and all(p.grad is None for p in vit.parameters())
    assert torch.equal(vit(images), before)
    torchvision_vit = as_torchvision(tiny_vit())
    camzoo.explain(torchvision_vit, images, method="legrad", target=TARGETS)
    assert not [m for m in torchvision_vit.modules() if m._forward_hooks or m._forward_pre_hooks]


def test_legrad_refuses_what_it_cannot_explain():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="vision transformers.*'gradcam'") as refused:
        camzoo.explain(cnn, torch.randn(1, 3, 16, 16), method="legrad")
    assert "\n" not in str(refused.value)
    legrad, vit = get_method("legrad"), tiny_vit()
    assert legrad.family == "attention-gradient" and legrad.cost == "backward" and legrad.uses_gradients
    assert not legrad.applies_to(BaselineModel) and legrad.applies_to(nn.Module)
    for options, message in [({"blocks": 0}, "from 1 to 3"), ({"blocks": DEPTH + 1}, "from 1 to 3"),
                             ({"layer": "blocks.1", "blocks": 1}, "not both"),
                             ({"layer": "norm"}, "not in a transformer block")]:
        with pytest.raises(ValueError, match=message):
            legrad(vit, **options)
    with pytest.raises(TypeError, match="does not accept"):
        camzoo.explain(vit, torch.randn(1, 3, SIZE, SIZE), method="legrad", reshape=lambda t: t)
