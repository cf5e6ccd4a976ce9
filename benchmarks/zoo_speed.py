"""Per-image cost of each method camzoo shares with pytorch-grad-cam or TorchCAM, against that peer's own
implementation, same model, images, targets and layer, in one process (interleaved medians).

Prints, per method, camzoo's ms/image, the peer's, their ratio, and camzoo's cost in multiples of one
forward+backward of the model (the floor of a gradient method). The pairs come from PEERS: each entry
names the camzoo method, the peer library and class, and how the peer is called. A method whose peer
is not installed is skipped with a line that says so.

    python benchmarks/zoo_speed.py --model resnet18 --size 64 --batch 4 --repeats 3
    python benchmarks/zoo_speed.py --device cuda --size 224 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds

import camzoo
from camzoo.modelutil import describe_device, resolve_device


class Peer(NamedTuple):
    """A camzoo method and its peer: ``library`` ("pytorch_grad_cam" or "torchcam.methods"), the class,
    its keyword options, and camzoo's options that make the two compute the same map."""

    method: str
    library: str
    cls: str
    peer_options: dict
    options: dict


PGC, TORCHCAM = "pytorch_grad_cam", "torchcam.methods"
PEERS = [
    Peer("gradcam", PGC, "GradCAM", {}, {}),
    Peer("gradcam_elementwise", PGC, "GradCAMElementWise", {}, {}),
    Peer("fem", PGC, "FEM", {}, {}),
    Peer("kpcacam", PGC, "KPCA_CAM", {}, {}),
    Peer("shapleycam", PGC, "ShapleyCAM", {}, {}),
    Peer("finercam", PGC, "FinerCAM", {}, {}),
    Peer("fullgrad", PGC, "FullGrad", {}, {}),
    Peer("refinecam", PGC, "RefineCAM", {}, {}),
    Peer("sess", PGC, "SESS", {"num_scales": 3}, {"num_scales": 3}),
    Peer("cam", TORCHCAM, "CAM", {}, {}),
    # the per-channel methods with few samples, so that a CPU run ends (the ratio does not depend on them)
    Peer("sscam", TORCHCAM, "SSCAM", {"num_samples": 2}, {"num_samples": 2}),
    Peer("iscam", TORCHCAM, "ISCAM", {"num_samples": 2}, {"num_samples": 2}),
    Peer("smoothgradcampp", TORCHCAM, "SmoothGradCAMpp", {}, {}),
]


def peer_call(peer: Peer, model: torch.nn.Module, layer_name: str, images: torch.Tensor,
              targets: torch.Tensor) -> Callable[[], object] | None:
    """A zero-argument call of the peer's implementation on its own copy of the model (its hooks stay
    registered for the object's life, and would slow every later run of a shared model), or None when
    its library is missing."""
    try:
        cls = getattr(importlib.import_module(peer.library), peer.cls)
    except (ImportError, AttributeError):
        return None
    model = copy.deepcopy(model)
    layer = model.get_submodule(layer_name)
    if peer.library == PGC:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
        layers = [layer, model.get_submodule("layer3")] if peer.cls == "RefineCAM" else [layer]
        extractor = cls(model, layers, **peer.peer_options)
        if peer.cls == "FinerCAM":  # its own target: the predicted class against its nearest classes
            return lambda: extractor(images, None)
        return lambda: extractor(images, pgc_targets)
    extractor = cls(model, layer_name, input_shape=tuple(images.shape[1:]), **peer.peer_options)

    def torchcam_call() -> object:
        with torch.enable_grad():
            scores = model(images)
        maps = extractor(targets.tolist(), scores)
        model.zero_grad(set_to_none=True)
        return maps

    return torchcam_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default="", help="comma-separated camzoo names (default: every pair)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    layer_name = "layer4" if hasattr(model, "layer4") else camzoo.explain(model, images[:1]).layer
    with torch.no_grad():
        targets = model(images).argmax(1)

    def forward_backward() -> None:
        model(images).gather(1, targets[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    chosen = [p for p in PEERS if not args.methods or p.method in args.methods.split(",")]
    print(f"device: {describe_device(device)}; torch {torch.__version__}; model {args.model} at {args.size}px, "
          f"batch {args.batch}, layer {layer_name}, median of {args.repeats}", flush=True)
    floor = median_seconds({"forward+backward": forward_backward}, device, args.repeats)["forward+backward"]
    print(f"{'method':20s} {'peer':32s} {'camzoo ms/img':>13s} {'peer ms/img':>11s} {'ratio':>6s} {'x F+B':>6s}", flush=True)
    for peer in chosen:
        call = peer_call(peer, model, layer_name, images, targets)
        if call is None:
            print(f"{peer.method:20s} {peer.library}.{peer.cls}: not installed, skipped", flush=True)
            continue
        method_layer = None if peer.method == "fullgrad" else (
            [layer_name, "layer3"] if peer.method == "refinecam" else layer_name)
        options = {"progress": False, **peer.options} if "progress" in camzoo.methods.get_method(
            peer.method).option_parameters() else dict(peer.options)

        def ours(peer: Peer = peer, options: dict = options, method_layer=method_layer) -> object:
            return camzoo.explain(model, images, method=peer.method, target=targets, layer=method_layer,
                                  method_options=options)

        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            seconds = median_seconds({"ours": ours, "peer": call}, device, args.repeats)
        ms = {key: 1000 * value / args.batch for key, value in seconds.items()}
        print(f"{peer.method:20s} {peer.library.split('.')[0] + ' ' + peer.cls:32s} {ms['ours']:13.2f} "
              f"{ms['peer']:11.2f} {ms['ours'] / ms['peer']:6.2f} {seconds['ours'] / floor:6.1f}", flush=True)


if __name__ == "__main__":
    main()
