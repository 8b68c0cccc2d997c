"""Reference architectures from torchvision. Their ImageNet weights come from the local torch
hub cache, or a download when there is a network; offline, `--weights random` or
`--weights PATH` are the ways forward."""
from __future__ import annotations

import os

import torch.nn as nn

from edge.models.labels import imagenet_labels
from edge.models.spec import IMAGENET, Preprocess, Weights, image_classifier, register_model


def _tv_builder(name: str):
    def build(*, input_shape: tuple[int, ...] = (1, 3, 224, 224), num_classes: int = 1000) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return build


def _tv_weights(name: str) -> Weights:
    def enum():
        import torchvision

        return torchvision.models.get_model_weights(name).DEFAULT

    def cached_path() -> str:
        import torch.hub

        return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum().url))

    def locate() -> str | None:
        path = cached_path()
        return path if os.path.exists(path) else None

    def fetch() -> str:
        import torch.hub

        torch.hub.load_state_dict_from_url(enum().url, progress=False, check_hash=True)
        return cached_path()

    return Weights(name="imagenet", description=f"torchvision {name} ImageNet-1k weights (torch hub cache)",
                   locate=locate, fetch=fetch, probe=lambda: {"torch_hub_file": os.path.basename(enum().url)})


# name, torchvision name, minimum input side, per-model budget overrides, description
_ZOO = [
    ("mobilenetv2", "mobilenet_v2", 32, {}, "MobileNetV2 (Sandler et al., 2018)"),
    ("resnet18", "resnet18", 32, {}, "ResNet-18 (He et al., 2016)"),
    ("mobilenet_v3_small", "mobilenet_v3_small", 32, {}, "MobileNetV3-Small (Howard et al., 2019)"),
    ("mobilenet_v3_large", "mobilenet_v3_large", 32, {}, "MobileNetV3-Large (Howard et al., 2019)"),
    ("shufflenet_v2_x1_0", "shufflenet_v2_x1_0", 32, {}, "ShuffleNetV2 1.0x (Ma et al., 2018)"),
    ("squeezenet1_1", "squeezenet1_1", 64, {}, "SqueezeNet 1.1 (Iandola et al., 2016)"),
]

for _name, _tv, _min, _budgets, _desc in _ZOO:
    register_model(image_classifier(
        name=_name, family="torchvision", builder=_tv_builder(_tv), input_size=224,
        preprocess=Preprocess(resize=256, crop=224, **IMAGENET), weights=_tv_weights(_tv),
        min_input_size=_min, budgets=_budgets, labels=imagenet_labels,
        description=_desc,
    ))
