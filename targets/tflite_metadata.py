"""TFLite Model Metadata for image classifiers: the input normalisation, the input's image
properties and a packed `labels.txt`, in the form the TFLite Task Library and MediaPipe Tasks read.

The metadata is a `ModelMetadata` flatbuffer (metadata_schema.fbs, file identifier "M001") in a
model buffer named by the model's `TFLITE_METADATA` metadata entry; associated files such as the
labels are a zip archive appended to the model. It is written with tflite-support 0.4.4, the only
installable tool here that writes it (MediaPipe 1.2.2 ships the writer without its native module),
installed with --no-deps (see requirements-nodeps.txt).

tflite-support's populator re-serialises the whole model through its own (2023) copy of the
TFLite schema, which lacks some newer fields (Buffer.offset/size of models over 2 GB,
Operator.builtin_options_2 of StableHLO ops, debug metadata). Before the file is replaced, the
rewritten model is parsed with ai-edge-litert's current schema and compared with the original,
field by field; any difference and nothing is written."""
from __future__ import annotations

import io
import math
import os
import platform
import secrets
import sys
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

from edge.errors import ConversionError, UserError

TOOL = "tflite-support"
METADATA_NAME = b"TFLITE_METADATA"
LABELS_FILE = "labels.txt"


def write_metadata(path: Path, *, labels: list[str] | None, mean: list[float] | None,
                   std: list[float] | None, input_name: str, output_name: str, description: str) -> dict:
    """Embed image-classifier metadata into the .tflite at `path`, replacing the file atomically.

    `mean`/`std` are per channel (or one value for all) on the 0-255 pixel scale: the model's
    input is (pixel - mean) / std, as TFLite's NormalizationOptions define it. `labels` become a
    packed `labels.txt` (TENSOR_AXIS_LABELS), one per output class. Returns what was written, for
    the manifest, or {"written": False, "reason": ...} with the file untouched when no installed
    tool can write the metadata without altering the graph. Bad arguments raise UserError."""
    path = Path(path)
    tool = _load_tool()
    if isinstance(tool, str):
        return {"written": False, "reason": tool}
    model = path.read_bytes()
    spec = _image_classifier_io(tool, model, path)
    _check_args(labels, mean, std, spec)
    try:
        blob = _populate(tool, _without_packed_files(model), path.stem, labels, mean, std, input_name,
                         output_name, description, spec)
    except (ValueError, OSError) as e:  # what the writer and populator raise
        raise ConversionError(f"tflite-support could not write metadata into {path.name}: {e}") from e
    lost = _graph_difference(tool.schema, model, bytes(blob))
    if lost:
        return {"written": False, "reason": f"tflite-support {tool.version} would alter the model graph "
                f"({lost}): its copy of the TFLite schema predates this model's"}
    _replace_atomic(path, bytes(blob))
    md = read_metadata(path)
    fields = ["name", "description", "input.image_properties"]
    fields += ["input.normalization"] if mean is not None else []
    fields += ["input.stats"] if md["input"]["min"] is not None else []
    fields += ["output.labels"] if labels is not None else []
    return {"written": True, "tool": f"{TOOL} {tool.version}", "format": "TFLite Model Metadata",
            "min_parser_version": md["min_parser_version"], "fields": fields,
            "labels_file": LABELS_FILE if labels is not None else None,
            "num_labels": len(labels) if labels is not None else None, "mean": md["mean"], "std": md["std"],
            "notes": _consumer_notes(tool, spec, mean, std)}


def read_metadata(path: Path) -> dict | None:
    """The metadata embedded in a .tflite, read with the tool that writes it, or None if it has none.

    Returns name, description, min_parser_version, the labels (None without a labels file),
    mean/std (None without normalisation), the input's color space and stats, and the packed
    associated files."""
    tool = _load_tool()
    if isinstance(tool, str):
        raise UserError(f"reading TFLite metadata: {tool}")
    fb = tool.metadata_fb
    try:
        shown = tool.metadata.MetadataDisplayer.with_model_buffer(Path(path).read_bytes())
    except ValueError as e:
        if "does not have metadata" in str(e):
            return None
        raise UserError(f"{path} is not a readable TFLite model: {e}") from None
    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(shown.get_metadata_buffer(), 0))
    sub = md.subgraphMetadata[0]
    inp, out = sub.inputTensorMetadata[0], sub.outputTensorMetadata[0]
    norm = next((u.options for u in inp.processUnits or []
                 if u.optionsType == fb.ProcessUnitOptions.NormalizationOptions), None)
    labels_file = next((f.name.decode() for f in out.associatedFiles or []
                        if f.type == fb.AssociatedFileType.TENSOR_AXIS_LABELS), None)
    color = inp.content.contentProperties.colorSpace if inp.content and inp.content.contentProperties else None
    return {
        "name": _text(md.name), "description": _text(md.description),
        "min_parser_version": _text(md.minParserVersion),
        "labels": shown.get_associated_file_buffer(labels_file).decode("utf-8").split("\n") if labels_file else None,
        "mean": _floats(norm.mean) if norm else None, "std": _floats(norm.std) if norm else None,
        "input": {"name": _text(inp.name), "description": _text(inp.description),
                  "color_space": _enum_name(fb.ColorSpaceType, color),
                  "min": _floats(inp.stats.min) if inp.stats else None,
                  "max": _floats(inp.stats.max) if inp.stats else None},
        "output": {"name": _text(out.name), "description": _text(out.description), "labels_file": labels_file},
        "associated_files": sorted(shown.get_packed_associated_file_list()),
    }


# --- the tool --------------------------------------------------------------------------------

def _load_tool() -> SimpleNamespace | str:
    """tflite-support's metadata modules, or the reason they cannot be used here."""
    from edge.targets.base import pkg_version

    blocked = "tensorflow" not in sys.modules
    if blocked:
        # tflite-support's metadata module imports TensorFlow when it can, only to open files
        # through tf.io.gfile; that costs 5 s and several hundred MB in a process that keeps
        # TensorFlow in a child (targets/tflite.py). A None entry makes that import fail, and it
        # falls back to open(). Removed again before returning.
        sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        from tensorflow_lite_support.metadata import metadata_schema_py_generated as metadata_fb
        from tensorflow_lite_support.metadata.python import metadata
        from tensorflow_lite_support.metadata.python.metadata_writers import (image_classifier, metadata_info,
                                                                              writer_utils)
    except ImportError as e:
        return _unavailable(e)
    finally:
        if blocked:
            del sys.modules["tensorflow"]
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return ("checking that the metadata leaves the graph alone needs ai-edge-litert's TFLite schema; "
                "install it with: pip install 'edge[tflite]'")
    return SimpleNamespace(metadata=metadata, metadata_fb=metadata_fb, image_classifier=image_classifier,
                           metadata_info=metadata_info, writer_utils=writer_utils, schema=schema,
                           version=pkg_version(TOOL))


def _unavailable(e: ImportError) -> str:
    if e.name and e.name.split(".")[0] == "tensorflow_lite_support":
        if platform.machine() not in ("x86_64", "AMD64"):
            return (f"tflite-support, the only tool here that writes TFLite metadata, has no wheel for "
                    f"{platform.system()} {platform.machine()} (its last release, 0.4.4, is x86-64 only on Linux)")
        return ("tflite-support is not installed; install it with: "
                "pip install --no-deps tflite-support==0.4.4 (see requirements-nodeps.txt)")
    if "libusb" in str(e):
        return (f"tflite-support's native metadata module cannot load ({e}); install Debian's "
                f"libusb-1.0-0 (apt-get install libusb-1.0-0, or make sysdeps as root)")
    return f"tflite-support's metadata module cannot be imported: {e}"


# --- checks ----------------------------------------------------------------------------------

def _image_classifier_io(tool: SimpleNamespace, model: bytes, path: Path) -> dict:
    """Input and output of the model as the metadata needs them; one NHWC image in, one vector out."""
    fb = tool.schema
    if not fb.Model.ModelBufferHasIdentifier(model, 0):
        raise UserError(f"{path} is not a TFLite model")
    m = fb.Model.GetRootAs(model, 0)
    g = m.Subgraphs(0) if m.SubgraphsLength() == 1 else None
    ins, outs = (g.InputsLength(), g.OutputsLength()) if g else (None, None)
    if (ins, outs) != (1, 1):
        raise UserError(f"{path.name}: image-classifier metadata needs one subgraph with one input and one "
                        f"output; it has {m.SubgraphsLength()} subgraph(s)"
                        + (f", {ins} input(s) and {outs} output(s)" if g else ""))
    inp, out = g.Tensors(g.Inputs(0)), g.Tensors(g.Outputs(0))
    in_shape, out_shape = list(inp.ShapeAsNumpy()), list(out.ShapeAsNumpy())
    if len(in_shape) != 4 or in_shape[3] != 3:
        raise UserError(f"{path.name}: image-classifier metadata needs an NHWC RGB input (1,H,W,3); "
                        f"the input's shape is {in_shape}")
    return {"input_type": inp.Type(), "channels": 3, "classes": int(out_shape[-1]) if out_shape else 1}


def _check_args(labels, mean, std, spec: dict) -> None:
    if (mean is None) != (std is None):
        raise UserError("TFLite metadata: give both mean and std, or neither")
    if mean is not None:
        if len(mean) != len(std) or len(mean) not in (1, spec["channels"]):
            raise UserError(f"TFLite metadata: mean and std need 1 or {spec['channels']} values each; "
                            f"got {len(mean)} and {len(std)}")
        if not all(math.isfinite(v) for v in [*mean, *std]) or min(std) <= 0:
            raise UserError(f"TFLite metadata: mean must be finite and std positive; got mean {list(mean)}, "
                            f"std {list(std)}")
    if labels is not None:
        if len(labels) != spec["classes"]:
            raise UserError(f"TFLite metadata: {len(labels)} labels for a model with {spec['classes']} outputs")
        bad = [lab for lab in labels if not isinstance(lab, str) or not lab.strip() or "\n" in lab or "\r" in lab]
        if bad:
            raise UserError(f"TFLite metadata: each label must be one non-empty line; got {bad[0]!r}")


def _consumer_notes(tool, spec: dict, mean, std) -> list[str]:
    """What keeps the two readers of this metadata from running the model as it is (seen here
    with the TFLite Task Library 0.4.4 and MediaPipe Tasks 1.2.2)."""
    notes = []
    if spec["input_type"] not in (tool.schema.TensorType.FLOAT32, tool.schema.TensorType.UINT8):
        notes.append("the TFLite Task Library and MediaPipe Tasks take uint8 or float32 input only; "
                     "this model's input is not (build it with --io float)")
    if mean is not None and (len(set(mean)) > 1 or len(set(std)) > 1):
        notes.append("MediaPipe Tasks refuses per-channel normalisation with different values per channel "
                     "('Per-channel image normalization is not available'); the TFLite Task Library applies it")
    return notes


# --- writing ---------------------------------------------------------------------------------

def _populate(tool, model: bytes, name: str, labels, mean, std, input_name: str, output_name: str,
              description: str, spec: dict) -> bytearray:
    mi, fb = tool.metadata_info, tool.metadata_fb
    float_in = spec["input_type"] == tool.schema.TensorType.FLOAT32
    in_desc = ("RGB image, NHWC; each pixel (0-255) becomes (pixel - mean) / std"
               + ("" if float_in else ", then is quantized with the input tensor's scale and zero point"))
    with tempfile.TemporaryDirectory(prefix="edge-tflite-metadata-") as tmp:
        label_files = []
        if labels is not None:
            label_path = Path(tmp) / LABELS_FILE
            label_path.write_text("\n".join(labels), encoding="utf-8")  # as MediaPipe's writer: no final newline
            label_files = [mi.LabelFileMd(file_path=str(label_path))]
        # tensor_type decides the input stats (float: the normalised range of 0-255; uint8: 0-255;
        # int8: none). The output gets none: edge's classifiers output logits, not probabilities in [0, 1].
        input_md = mi.InputImageTensorMd(name=input_name, description=in_desc,
                                         norm_mean=list(mean) if mean is not None else None,
                                         norm_std=list(std) if std is not None else None,
                                         color_space_type=fb.ColorSpaceType.RGB,
                                         tensor_type=tool.writer_utils.get_input_tensor_types(model)[0])
        output_md = mi.ClassificationTensorMd(name=output_name, description="Class scores (logits), one per label.",
                                              label_files=label_files)
        writer = tool.image_classifier.MetadataWriter.create_from_metadata_info(
            bytearray(model), general_md=mi.GeneralMd(name=name, description=description),
            input_md=input_md, output_md=output_md)
        return writer.populate()


def _without_packed_files(model: bytes) -> bytes:
    """The model without the zip of associated files that an earlier write appended, so that
    writing again replaces them (the populator refuses to pack a file name twice)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            starts = [info.header_offset for info in z.infolist()]  # absolute offsets in `model`
    except zipfile.BadZipFile:
        return model
    return model[:min(starts)] if starts else model


def _graph_difference(schema, before: bytes, after: bytes) -> str | None:
    """Where `after` differs from `before`, read with the current TFLite schema, other than in
    the TFLITE_METADATA entry and its buffer; None when identical."""
    return _diff(_without_metadata(schema, before), _without_metadata(schema, after), "model")


def _without_metadata(schema, blob: bytes):
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAs(blob, 0))
    ours = {e.buffer for e in m.metadata or [] if e.name == METADATA_NAME}
    m.metadata = [e for e in m.metadata or [] if e.name != METADATA_NAME]
    buffers = [None if i in ours else b for i, b in enumerate(m.buffers or [])]
    while buffers and buffers[-1] is None:  # the populator appends its buffer at the end
        buffers.pop()
    m.buffers = buffers
    return m


def _diff(a, b, where: str) -> str | None:
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} -> {type(b).__name__}"
    if hasattr(a, "tobytes"):  # numpy arrays: bit for bit (NaN-safe)
        same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        return None if same else f"{where} changed"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: {len(a)} -> {len(b)} entries"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _diff(x, y, f"{where}[{i}]"))), None)
    if hasattr(a, "__dict__"):
        return next((d for k in vars(a) if (d := _diff(vars(a)[k], vars(b).get(k), f"{where}.{k}"))), None)
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else f"{where}: {a!r} -> {b!r}"


def _replace_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a new file beside `path`, then rename it over `path`. The file is created
    with os.open(..., 0o666) so its mode follows the umask like any file (mkstemp gives 0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- small helpers ---------------------------------------------------------------------------

def _text(v) -> str | None:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def _floats(v) -> list[float] | None:
    return None if v is None or isinstance(v, int) else [float(x) for x in v]


def _enum_name(enum, value) -> str | None:
    return next((k for k, v in vars(enum).items() if not k.startswith("_") and v == value), None)
