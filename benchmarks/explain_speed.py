"""Per-image cost of camzoo's Grad-CAM / Eigen-CAM vs pytorch-grad-cam and Captum, same model, same process.

Also times the model's own forward (the floor for Eigen-CAM) and forward+backward (the floor for
Grad-CAM), every one-pass method of the registry together (camzoo.explain(method=[...]), target
<= 1.2x one Grad-CAM), and prints every method as a ratio to its peer and to its floor. Then Score-CAM and
Ablation-CAM against pytorch-grad-cam's on --perturb-model (one full forward per channel and image:
keep it small on a CPU), one interleaved round each.

    python benchmarks/explain_speed.py --model resnet50 --size 224 --batch 32 --repeats 3 \
        --perturb-model resnet18 --perturb-size 64 --perturb-batch 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds

import camzoo
from camzoo.modelutil import describe_device, resolve_device



def one_pass_methods() -> list[str]:
    """Every registered method that shares one forward and backward (the registry's facts, so a newly
    registered one is timed with no edit here)."""
    return camzoo.methods.select_methods(["@one-pass"])


def setup(name: str, size: int, batch: int, device: torch.device):
    """A seeded random-weight timm model, a random batch, camzoo's default layer and the predicted classes."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    layer_name = camzoo.explain(model, images[:1]).layer
    with torch.no_grad():
        targets = model(images).argmax(1)
    return model, images, layer_name, model.get_submodule(layer_name), targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--perturb-model", default="resnet18", help="model for Score-CAM / Ablation-CAM")
    parser.add_argument("--perturb-size", type=int, default=64)
    parser.add_argument("--perturb-batch", type=int, default=2)
    parser.add_argument("--perturb-repeats", type=int, default=1)
    parser.add_argument("--skip-perturbation", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, images, layer_name, layer, targets = setup(args.model, args.size, args.batch, device)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def forward_backward() -> None:
        logits = model(images.requires_grad_(False))
        logits.gather(1, targets[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import EigenCAM, GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    pgc_gradcam = GradCAM(model=model, target_layers=[layer])
    pgc_eigencam = EigenCAM(model=model, target_layers=[layer])
    captum_gradcam = LayerGradCam(model, layer)

    def captum_run() -> None:
        raw = captum_gradcam.attribute(images, target=targets, relu_attributions=True)
        LayerAttribution.interpolate(raw, images.shape[-2:], interpolate_mode="bilinear")

    runs = {
        "forward": forward,
        "forward+backward": forward_backward,
        "camzoo gradcam": lambda: camzoo.explain(model, images, method="gradcam", target=targets),
        "camzoo eigencam": lambda: camzoo.explain(model, images, method="eigencam"),
        "camzoo one-pass methods": lambda: camzoo.explain(model, images, method=one_pass_methods(), target=targets),
        "pytorch-grad-cam GradCAM": lambda: pgc_gradcam(input_tensor=images, targets=pgc_targets),
        "pytorch-grad-cam EigenCAM": lambda: pgc_eigencam(input_tensor=images, targets=None),
        "captum LayerGradCam (+bilinear)": captum_run,
    }
    seconds = median_seconds(runs, device, args.repeats)
    per_image_ms = {name: 1000 * value / args.batch for name, value in seconds.items()}
    pgc_gradcam.activations_and_grads.release()
    pgc_eigencam.activations_and_grads.release()

    print(f"device: {describe_device(device)}; torch {torch.__version__}; model {args.model} at {args.size}px, "
          f"batch {args.batch}, layer {layer_name}, median of {args.repeats}")
    print(f"one-pass methods: {', '.join(one_pass_methods())}")
    print(f"{'run':34s} {'ms/image':>9s}")
    for name, value in per_image_ms.items():
        print(f"{name:34s} {value:9.2f}")
    ratios = {
        "camzoo gradcam / pytorch-grad-cam GradCAM": ("camzoo gradcam", "pytorch-grad-cam GradCAM"),
        "camzoo gradcam / captum LayerGradCam": ("camzoo gradcam", "captum LayerGradCam (+bilinear)"),
        "camzoo gradcam / forward+backward": ("camzoo gradcam", "forward+backward"),
        "camzoo eigencam / pytorch-grad-cam EigenCAM": ("camzoo eigencam", "pytorch-grad-cam EigenCAM"),
        "camzoo eigencam / forward": ("camzoo eigencam", "forward"),
        "camzoo one-pass methods / camzoo gradcam": ("camzoo one-pass methods", "camzoo gradcam"),
    }
    print("ratios (lower is faster):")
    for label, (a, b) in ratios.items():
        print(f"  {label:45s} {per_image_ms[a] / per_image_ms[b]:.2f}")
    if not args.skip_perturbation:
        perturbation(args, device)


def perturbation(args: argparse.Namespace, device: torch.device) -> None:
    """Score-CAM and Ablation-CAM, camzoo vs pytorch-grad-cam, same model, images, targets and layer."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images, layer_name, layer, targets = setup(args.perturb_model, args.perturb_size, args.perturb_batch,
                                                      device)
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    pgc = {"scorecam": ScoreCAM(model=model, target_layers=[layer]),
           "ablationcam": AblationCAM(model=model, target_layers=[layer])}
    options = {"progress": False}
    runs = {}
    for name, peer in pgc.items():
        runs[f"camzoo {name}"] = lambda name=name: camzoo.explain(model, images, method=name, target=targets,
                                                                  layer=layer_name, method_options=options)
        runs[f"pytorch-grad-cam {name}"] = lambda peer=peer: peer(input_tensor=images, targets=pgc_targets)
    with contextlib.redirect_stderr(io.StringIO()):  # pytorch-grad-cam's per-image tqdm bars
        seconds = median_seconds(runs, device, args.perturb_repeats, warmup=0)
    for peer in pgc.values():
        peer.activations_and_grads.release()
    channels = camzoo.explain(model, images[:1], method="eigencam", layer=layer_name)
    print(f"\nperturbation methods: model {args.perturb_model} at {args.perturb_size}px, batch {args.perturb_batch}, "
          f"layer {layer_name} ({channels.raw.shape[-2]}x{channels.raw.shape[-1]}), median of {args.perturb_repeats}")
    for name, value in seconds.items():
        print(f"{name:34s} {1000 * value / args.perturb_batch:9.1f} ms/image")
    for name in pgc:
        print(f"  speed-up of camzoo {name} over pytorch-grad-cam: "
              f"{seconds[f'pytorch-grad-cam {name}'] / seconds[f'camzoo {name}']:.1f}x")


if __name__ == "__main__":
    main()
