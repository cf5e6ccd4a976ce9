"""Per-image cost of camzoo's Grad-CAM / Eigen-CAM vs pytorch-grad-cam and Captum, same model, same process.

Also times the model's own forward (the floor for Eigen-CAM) and forward+backward (the floor for
Grad-CAM), and prints every method as a ratio to its peer and to its floor.

    python benchmarks/explain_speed.py --model resnet50 --size 224 --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds  # noqa: E402

import camzoo  # noqa: E402
from camzoo.modelutil import describe_device, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    layer_name = camzoo.explain(model, images[:1]).layer
    layer = model.get_submodule(layer_name)
    with torch.no_grad():
        targets = model(images).argmax(1)

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
    print(f"{'run':34s} {'ms/image':>9s}")
    for name, value in per_image_ms.items():
        print(f"{name:34s} {value:9.2f}")
    ratios = {
        "camzoo gradcam / pytorch-grad-cam GradCAM": ("camzoo gradcam", "pytorch-grad-cam GradCAM"),
        "camzoo gradcam / captum LayerGradCam": ("camzoo gradcam", "captum LayerGradCam (+bilinear)"),
        "camzoo gradcam / forward+backward": ("camzoo gradcam", "forward+backward"),
        "camzoo eigencam / pytorch-grad-cam EigenCAM": ("camzoo eigencam", "pytorch-grad-cam EigenCAM"),
        "camzoo eigencam / forward": ("camzoo eigencam", "forward"),
    }
    print("ratios (lower is faster):")
    for label, (a, b) in ratios.items():
        print(f"  {label:45s} {per_image_ms[a] / per_image_ms[b]:.2f}")


if __name__ == "__main__":
    main()
