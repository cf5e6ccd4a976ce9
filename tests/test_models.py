"""camzoo.models: baseline, ABN and LFI-CAM on a CIFAR ResNet and a timm CNN."""

from __future__ import annotations

import errno

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camzoo
from camzoo.models import build_model, load_model, save_model
from camzoo.models.backbones import build_backbone, output_stride, split_timm_model
from camzoo.models.lfi import FeatureImportanceNetwork, lfi_attention, normalize_channels
from helpers import fail_writes

KINDS = ("baseline", "abn", "lfi")
# (backbone, image size, ABN map size, LFI map size): CIFAR ResNet at 32 px (ABN at stride 2x2=4
# from the stride-1 stem -> 16, LFI on layer3 -> 8); timm resnet18 at 64 px (ABN at stride 16 -> 4,
# LFI at stride 16 because of the official stride-1 stem -> 4).
BACKBONES = [("resnet8", 32, 16, 8), ("resnet18", 64, 4, 4)]


def _model(kind: str, backbone: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, backbone, 5, **options)


def _capture(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.setdefault("out", o))
    try:
        model(x)
    finally:
        handle.remove()
    return store["out"]


@pytest.mark.parametrize("backbone,size,abn_map,lfi_map", BACKBONES)
@pytest.mark.parametrize("kind", KINDS)
def test_build_forward_backward(kind, backbone, size, abn_map, lfi_map):
    model = _model(kind, backbone).train()
    x = torch.randn(3, 3, size, size)
    out = model.forward_train(x)
    assert out.logits.shape == (3, 5)
    loss = model.loss(out, torch.tensor([0, 1, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), "every parameter gets a finite gradient"
    assert grads["backbone.trunk.conv1.weight" if backbone == "resnet18" else "backbone.trunk.stem.conv1.weight"].abs().sum() > 0
    if kind == "baseline":
        assert out.attention is None and not hasattr(model, "forward_with_attention")
    else:
        expected = abn_map if kind == "abn" else lfi_map
        assert out.attention.shape == (3, 1, expected, expected)
        assert out.attention.min() >= 0 and out.attention.max() <= 1
        attention_params = "attention_branch" if kind == "abn" else "fin"
        assert sum(g.abs().sum() for n, g in grads.items() if n.startswith(attention_params)) > 0
        model.eval()
        logits, attention = model.forward_with_attention(x)
        assert torch.allclose(logits, model(x)) and attention.shape == out.attention.shape
    # the public contract: plain logits in both modes, a cam layer, a timm-like pretrained_cfg
    model.train()
    assert model(x).shape == (3, 5)
    hook = model.get_submodule(model.default_cam_layer)
    assert isinstance(hook, nn.Identity)
    feats = _capture(model.eval(), model.default_cam_layer, x)
    assert feats.dim() == 4 and feats.shape[1] == model.fc.in_features
    assert set(model.pretrained_cfg) >= {"input_size", "mean", "std"} and model.pretrained_cfg["input_size"][0] == 3
    assert model.class_names is None


def test_lfi_fin_weights_are_a_softmax():
    model = _model("lfi", "resnet8").eval()
    out = model.forward_train(torch.randn(4, 3, 32, 32))
    w = out.channel_weights
    assert w.shape == (4, 64)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))


def test_abn_returns_both_logits_in_training_and_sums_two_losses():
    model = _model("abn", "resnet8").train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model.forward_train(x)
    assert out.aux_logits.shape == (4, 5) and out.logits.shape == (4, 5)
    assert not torch.allclose(out.aux_logits, out.logits)
    expected = F.cross_entropy(out.aux_logits, y) + F.cross_entropy(out.logits, y)
    torch.testing.assert_close(model.loss(out, y), expected)
    # the attention-branch classifier learns from the loss; model(x) gives the perception logits
    model.loss(out, y).backward()
    assert model.attention_branch.cls_conv.weight.grad.abs().sum() > 0
    model.eval()
    torch.testing.assert_close(model(x), model.forward_train(x).logits)


def test_abn_branch_is_a_stride1_copy_with_its_own_weights():
    model = _model("abn", "resnet18")
    branch, last = model.attention_branch.stage, model.backbone.last_stage
    assert [type(m) for m in branch.modules()] == [type(m) for m in last.modules()]
    strides = [m.stride for m in branch.modules() if isinstance(m, nn.Conv2d)]
    assert all(tuple(s) == (1, 1) for s in strides)
    assert any(max(m.stride) == 2 for m in last.modules() if isinstance(m, nn.Conv2d))
    first_b = next(m for m in branch.modules() if isinstance(m, nn.Conv2d))
    first_l = next(m for m in last.modules() if isinstance(m, nn.Conv2d))
    assert not torch.equal(first_b.weight, first_l.weight)


@pytest.mark.parametrize("backbone,size", [("resnet8", 32), ("resnet18", 64)])
def test_attention_mechanism_is_one_plus_m_times_features(backbone, size):
    x = torch.randn(2, 3, size, size)
    # LFI-CAM: with M forced to 0 the classifier sees exactly the backbone features; with M = 1, twice them.
    lfi = _model("lfi", backbone).eval()
    features = lfi.backbone(x)
    for value, factor in ((0.0, 1.0), (1.0, 2.0)):
        lfi.attention_map = lambda f, img, v=value: (torch.full_like(f[:, :1], v), None)
        torch.testing.assert_close(_capture(lfi, lfi.default_cam_layer, x), factor * features)
    # ABN: with M forced to 0 the perception branch is the plain backbone.
    abn = _model("abn", backbone).eval()
    branch_forward = abn.attention_branch.forward
    abn.attention_branch.forward = lambda t: (branch_forward(t)[0], torch.zeros_like(t[:, :1]))
    torch.testing.assert_close(_capture(abn, abn.default_cam_layer, x), abn.backbone(x))
    # and with the real M, X' = (1 + M) * X reaches the last stage
    del abn.attention_branch.forward
    trunk = abn.backbone.trunk(x)
    _, m = abn.attention_branch(trunk)
    torch.testing.assert_close(_capture(abn, abn.default_cam_layer, x), abn.backbone.last_stage((1 + m) * trunk))


# --- LFI-CAM's vectorised map against a plain re-statement of the official per-channel loop ---


def _official_lfi_map(fe_raw: torch.Tensor, image: torch.Tensor, fin: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The official forward (models/cifar/resnet_lfiv2.py, final version), restated step by step:
    per-channel min-max with NaN -> 1 and zeros -> 0, FIN on the masked features, softmax, a Python
    loop over channels, ReLU, per-image min-max with NaN -> un-normalised value."""
    b, c, u, v = fe_raw.shape
    gray = torch.mean(image, dim=1, keepdim=True)
    resized = F.interpolate(gray, (u, v), mode="bilinear")
    fe = fe_raw.clone().view(b, c, -1)
    fe = fe - fe.min(2, keepdim=True)[0]
    fe = fe / fe.max(2, keepdim=True)[0]
    fe = fe.view(b, c, u, v)
    fe[torch.isnan(fe)] = 1
    fe[fe_raw == 0] = 0
    w = torch.softmax(fin(fe * resized).view(b, -1), dim=-1)
    sal = torch.zeros(b, 1, u, v)
    for i in range(c):
        sal += w[:, i].view(b, 1, 1, 1) * fe_raw[:, i : i + 1]
    sal = F.relu(sal)
    org = sal.clone()
    flat = sal.view(b, 1, -1)
    flat = flat - flat.min(2, keepdim=True)[0]
    flat = flat / flat.max(2, keepdim=True)[0]
    sal = flat.view(b, 1, u, v)
    sal[torch.isnan(sal)] = org[torch.isnan(sal)]
    return sal, w


def test_lfi_vectorised_map_equals_official_loop():
    torch.manual_seed(0)
    feats = torch.randn(3, 16, 6, 5)
    feats[:, 3] = 0.0  # a dead channel
    feats[:, 7] = 2.5  # a constant, non-zero channel (official: normalised to 1, not NaN)
    feats[0, 9, 2:4, 1:3] = 0.0  # exact zeros inside a live channel
    feats = feats.relu() + feats * (feats < 0) * 0.1  # mostly non-negative, a few negatives left
    images = torch.randn(3, 3, 24, 20)
    fin = FeatureImportanceNetwork(16, variant="cifar").eval()
    with torch.no_grad():
        ours, w_ours = lfi_attention(feats, images, fin)
        theirs, w_theirs = _official_lfi_map(feats, images, fin)
    torch.testing.assert_close(w_ours, w_theirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert ours.amin(dim=(2, 3)).eq(0).all() and ours.amax(dim=(2, 3)).sub(1).abs().lt(1e-6).all()


def test_normalize_channels_edge_cases_without_nan():
    f = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]], [[0.0, 1.0], [2.0, 4.0]]]], requires_grad=True)
    out = normalize_channels(f)
    expected = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.25], [0.5, 1.0]]]])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert torch.isfinite(f.grad).all()


def test_lfi_constant_map_is_zero_not_nan():
    fin = FeatureImportanceNetwork(4).eval()
    feats = -torch.rand(2, 4, 3, 3)  # all negative: ReLU(sum w F) == 0 everywhere
    with torch.no_grad():
        att, _ = lfi_attention(feats, torch.randn(2, 3, 12, 12), fin)
    assert torch.equal(att, torch.zeros_like(att))


def test_fin_width_and_variant_options():
    narrow = _model("lfi", "resnet8", fin_width=16)
    convs = [m for m in narrow.fin.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 16), (16, 16), (16, 16), (16, 64)]
    assert sum(isinstance(m, nn.ReLU) for m in narrow.fin.modules()) == 2  # CIFAR variant by default
    wide = _model("lfi", "resnet8", fin_variant="imagenet")
    assert sum(isinstance(m, nn.ReLU) for m in wide.fin.modules()) == 4
    assert wide.config["options"]["fin_variant"] == "imagenet"


def test_lfi_stride1_stem_default_on_timm_only():
    lfi, base = _model("lfi", "resnet18"), _model("baseline", "resnet18")
    assert output_stride(lfi.backbone, 64) == 16 and output_stride(base.backbone, 64) == 32
    assert lfi.config["options"]["stem_stride1"] is True
    matched = _model("lfi", "resnet18", stem_stride1=False)
    assert output_stride(matched.backbone, 64) == 32
    assert _model("lfi", "resnet8").config["options"]["stem_stride1"] is False
    with pytest.raises(ValueError, match="already has a stride-1 stem"):
        _model("baseline", "resnet8", stem_stride1=True)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "regnetx_002", "convnext_atto"])
def test_timm_split_computes_the_timm_feature_maps(name):
    """trunk / last stage reproduce timm's own last two feature levels (forward_intermediates)."""
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    trunk, last, trunk_ch, out_ch = split_timm_model(name, model)
    levels = len(model.feature_info)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mid_ref, out_ref = model.forward_intermediates(x, indices=[levels - 2, levels - 1], intermediates_only=True)
        mid = trunk(x)
        torch.testing.assert_close(mid, mid_ref)
        torch.testing.assert_close(last(mid), out_ref)
    assert (mid.shape[1], out_ref.shape[1]) == (trunk_ch, out_ch)


@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto", "mobilenetv3_small_100"])
def test_other_timm_families_run_abn_and_lfi(name):
    # resnet10t: ResNet-D average-pool shortcut; convnext_atto: kernel-2 patchify downsampling;
    # mobilenetv3: depthwise 5x5 convolutions - three different ways of striding to re-stride.
    x = torch.randn(2, 3, 64, 64)
    for kind in ("abn", "lfi"):
        model = _model(kind, name).train()
        out = model.forward_train(x)
        model.loss(out, torch.tensor([0, 1])).backward()
        assert out.logits.shape == (2, 5) and out.attention.min() >= 0 and out.attention.max() <= 1
        if kind == "abn":
            assert out.attention.shape[-2:] == model.backbone.trunk(x).shape[-2:]


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "hrnet_w18_small"])
def test_unsplittable_backbones_error_clearly(name):
    with pytest.raises(ValueError, match="cannot|transformer|CNN"):
        build_model("baseline", name, 3)


def test_cifar_depths_and_block_option():
    def n_blocks(model):
        return sum(1 for m in model.modules() if type(m).__name__ in ("BasicBlock", "Bottleneck"))

    assert n_blocks(build_backbone("resnet20")) == 9 and n_blocks(build_backbone("resnet110")) == 54
    bottleneck = build_backbone("resnet56", cifar_block="bottleneck")
    assert bottleneck.num_features == 256 and n_blocks(bottleneck) == 27
    with pytest.raises(ValueError, match="6n\\+2"):
        build_backbone("cifar_resnet21")


def test_bad_arguments_error_clearly():
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("gradcam", "resnet8", 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("baseline", "resnet8", 1)
    with pytest.raises(ValueError, match="unknown option"):
        build_model("abn", "resnet8", 3, fin_width=8)
    with pytest.raises(ValueError, match="class_names has 2 entries"):
        build_model("baseline", "resnet8", 3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="unknown backbone 'resnet18x'.*resnet18"):
        build_model("baseline", "resnet18x", 3)
    model = build_model("lfi", "resnet8", 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))


def test_top_level_build_model_and_preprocessing_options():
    model = camzoo.build_model("lfi", "resnet8", 3, class_names=["a", "b", "c"], image_size=48,
                               mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert model.class_names == ["a", "b", "c"]
    assert model.pretrained_cfg["input_size"] == (3, 48, 48) and model.pretrained_cfg["std"] == (0.2, 0.2, 0.2)


# --- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind,backbone", [("lfi", "resnet8"), ("abn", "resnet18")])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, kind, backbone):
    model = _model(kind, backbone, class_names=list("abcde"), image_size=64)
    model.train()
    model(torch.randn(8, 3, 64, 64))  # move the BN running statistics away from their init
    model.eval()
    path = save_model(model, tmp_path / "m.pt")
    restored = load_model(path)
    assert not restored.training and restored.class_names == list("abcde")
    assert restored.pretrained_cfg["input_size"] == (3, 64, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
        assert torch.equal(model.forward_with_attention(x)[1], restored.forward_with_attention(x)[1])


def test_corrupt_and_foreign_checkpoints_error_clearly(tmp_path):
    model = _model("lfi", "resnet8")
    good = save_model(model, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot load"):
        load_model(garbage)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(ValueError, match="not a camzoo model checkpoint"):
        load_model(plain)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_a_checkpoint_save_on_a_full_disk_keeps_the_finished_file(tmp_path, monkeypatch):
    model = camzoo.build_model("baseline", "resnet8", num_classes=3, image_size=32)
    path = save_model(model, tmp_path / "model.pt")
    before = path.read_bytes()
    fail_writes(monkeypatch, ".pt")
    with pytest.raises(OSError) as caught:
        save_model(model, path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    assert torch.load(path, weights_only=True)["camzoo_version"] == camzoo.__version__  # and it says who wrote it


def test_wrong_architecture_checkpoint_errors_clearly(tmp_path):
    from camzoo.io import load_torch, save_torch

    ckpt = load_torch(save_model(_model("lfi", "resnet8"), tmp_path / "m.pt"))
    ckpt["config"]["backbone"] = "resnet20"  # weights of resnet8, config of resnet20
    save_torch(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_model(tmp_path / "mismatch.pt")
    ckpt["config"]["kind"] = "transformer"
    save_torch(ckpt, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        load_model(tmp_path / "unknown.pt")
