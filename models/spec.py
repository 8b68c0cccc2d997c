"""ModelSpec: everything the pipeline needs to know about one reference model, and the registry.

A model declares its inputs and outputs as typed specs (edge.tensors): any number of each, any
rank and dtype. An input says how samples for it are made (an image and its preprocessing, a
value range, token ids of a vocabulary, an attention mask); an output says which task judges it
(classification logits, or a dense output: segmentation map, detection head, embedding,
regression). `image_classifier(...)` is the short form for the common case: one RGB image in,
one logits vector out.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from edge.registry import Registry
from edge.tensors import Image, InputSpec, OutputSpec, Preprocess

IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@dataclass(frozen=True)
class Weights:
    """Where a model's pretrained weights come from.

    `locate()` returns a local file path, or None when the weights are not on this machine.
    `fetch()` may download (it fails cleanly offline)."""

    name: str  # "imagenet"
    description: str
    locate: Callable[[], str | None]
    fetch: Callable[[], str] | None = None
    top1: float | None = None  # published ImageNet top-1, for information
    # How to tell, without importing torch, whether they are on this machine (recorded in the catalog):
    # {"module": importable package} or {"torch_hub_file": file name in torch hub's checkpoints folder}
    probe: Callable[[], dict] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One registered model. `builder(input_shape=..., num_classes=...)` returns an nn.Module with
    random weights (the pipeline loads weights separately); `input_shape` is the first input's
    shape, so a network whose layers depend on its input size (TF "SAME" padding) can fit it."""

    name: str
    family: str
    builder: Callable[..., "object"]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    num_classes: int = 1000  # classes of the classification output (0: none)
    weights: Weights | None = None
    min_input_size: int = 32  # smallest spatial side the architecture accepts (for fast tests)
    budgets: dict[str, dict[str, float]] = field(default_factory=dict)  # precision -> overrides
    description: str = ""
    labels: Callable[[], list[str]] | None = None  # class names in index order
    resizable: bool = True  # --input-shape may change the first input's spatial size

    def __post_init__(self):
        if not self.inputs or not self.outputs:
            raise ValueError(f"model {self.name} must declare at least one input and one output")
        for group in (self.inputs, self.outputs):
            names = [t.name for t in group]
            if len(set(names)) != len(names):
                raise ValueError(f"model {self.name} declares a tensor name twice: {names}")

    # -- the single-image conveniences most of the pipeline's image paths use -------------------
    @property
    def image(self) -> InputSpec | None:
        """The model's image input, if its first input is one."""
        first = self.inputs[0]
        return first if isinstance(first.source, Image) else None

    @property
    def preprocess(self) -> Preprocess:
        """The image input's preprocessing at the default size (image models only)."""
        if self.image is None:
            raise AttributeError(f"model {self.name} has no image input")
        return self.image.source.preprocess

    @property
    def input_size(self) -> int:
        return self.inputs[0].shape[-1]

    def input_shape(self, input_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """The first input's shape; an image model's at another (square or H, W) size."""
        shape = self.inputs[0].shape
        if input_size is None:
            return tuple(shape)
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        return (*shape[:-2], h, w)

    def at(self, input_shape: tuple[int, ...]) -> "ModelSpec":
        """This spec with its first input resized (an image input's preprocessing follows)."""
        first = self.inputs[0]
        if tuple(input_shape) == tuple(first.shape):
            return self
        source = first.source
        if isinstance(source, Image):
            source = Image(source.preprocess.at(tuple(input_shape[-2:])))
        return replace(self, inputs=(replace(first, shape=tuple(input_shape), source=source), *self.inputs[1:]))

    def build(self, input_size: int | tuple[int, ...] | None = None):
        """The network (random weights, eval mode) for the default shape, a side, or a full shape."""
        if input_size is None:
            shape = self.inputs[0].shape
        elif isinstance(input_size, int) or len(input_size) == 2:
            shape = self.input_shape(input_size)
        else:
            shape = tuple(input_size)
        model = self.builder(input_shape=tuple(shape), num_classes=self.num_classes)
        return model.eval()

    def with_classes(self, names: list[str]) -> "ModelSpec":
        """This spec with a classification output of len(names) classes (a fine-tuned classifier)."""
        names = list(names)
        cls = next(i for i, o in enumerate(self.outputs) if o.task == "classification")
        out = replace(self.outputs[cls], shape=(1, len(names)))
        return replace(self, num_classes=len(names), outputs=(*self.outputs[:cls], out, *self.outputs[cls + 1:]),
                       labels=lambda: names)

    def budget(self, precision: str, task: str = "classification") -> dict[str, float]:
        from edge.precisions import PRECISIONS

        return {**PRECISIONS.get(precision).budget(task), **self.budgets.get(precision, {})}


def image_classifier(*, name: str, family: str, builder: Callable, input_size: int, preprocess: Preprocess,
                     num_classes: int = 1000, **kw) -> ModelSpec:
    """The spec of a one-RGB-image-in, one-logits-vector-out classifier."""
    pre = preprocess.at(input_size)
    return ModelSpec(name=name, family=family, builder=builder,
                     inputs=(InputSpec("input", (1, 3, pre.crop_hw[0], pre.crop_hw[1]), "float32", "NCHW", Image(pre)),),
                     outputs=(OutputSpec("output", "classification", (1, num_classes)),),
                     num_classes=num_classes, **kw)


# The model files, imported (with torch) the first time a model is asked for. Adding a model: one
# file that calls register_model, plus its module name here.
FAMILIES = ("efficientnet_lite", "tiny", "torchvision_zoo", "cifar", "digits", "segmentation", "detection", "audio",
            "text")


def _import_families() -> None:
    import importlib

    for family in FAMILIES:
        importlib.import_module(f"edge.models.{family}")


MODELS: Registry[ModelSpec] = Registry("model", "edge models", populate=_import_families)


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)
