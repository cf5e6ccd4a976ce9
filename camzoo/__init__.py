"""camzoo: class activation maps for CNN classifiers, and honest benchmarks of them."""

from ._version import __version__


def build_model(kind: str, backbone: str, num_classes: int, **options):
    """Build a "baseline", "abn" or "lfi" model (see camzoo.models.build_model); imported lazily
    so that ``import camzoo`` and the CLI stay fast."""
    from .models import build_model as _build_model

    return _build_model(kind, backbone, num_classes, **options)


__all__ = ["__version__", "build_model"]
