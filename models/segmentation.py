"""Semantic segmentation: torchvision's LR-ASPP MobileNetV3-Large (Howard et al., 2019), 21 classes
(Pascal VOC), at a 240x320 camera frame: one dense output, the per-pixel class scores (N, 21, H, W),
judged by cosine, SQNR and per-pixel agreement. Its COCO/VOC weights are not available offline
here: random weights (batch-norm statistics re-estimated on the built-in photos)."""
from __future__ import annotations

import torch.nn as nn

from edge.models.spec import IMAGENET, ModelSpec, register_model
from edge.tensors import Image, InputSpec, OutputSpec, Preprocess


class LRASPP(nn.Module):
    """The torchvision model with its dict output made a tensor (the "out" map, at the input's size)."""

    def __init__(self, num_classes: int):
        super().__init__()
        import torchvision

        self.net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, image):
        return self.net(image)["out"]


def build_lraspp(*, input_shape: tuple[int, ...] = (1, 3, 240, 320), num_classes: int = 21) -> nn.Module:
    return LRASPP(num_classes)


register_model(ModelSpec(
    name="lraspp_mobilenet_v3", family="segmentation", builder=build_lraspp,
    inputs=(InputSpec("image", (1, 3, 240, 320), "float32", "NCHW",
                      Image(Preprocess(resize=240, crop=(240, 320), **IMAGENET))),),
    outputs=(OutputSpec("scores", "segmentation", layout="NCHW"),),
    num_classes=21, min_input_size=64,
    description="LR-ASPP MobileNetV3-Large segmenter, 21 classes, 240x320 (random weights)",
))
