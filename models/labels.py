"""Class names, in class-index order, for the label files written beside classifier artifacts."""
from __future__ import annotations


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names (torchvision's own list, installed with it: no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)
