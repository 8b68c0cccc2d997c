"""The `edge` command line. Errors become one line and an exit code (2: your input, 1: a
conversion or parity failure); `--debug` shows the traceback."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from edge.config import BUDGET_KEYS, BuildConfig
from edge.errors import EdgeError, UserError

log = logging.getLogger("edge")


def _shape(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a shape like 1,3,224,224") from None


def _add_budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parity budgets (defaults come from the model and precision)")
    g.add_argument("--max-abs", type=float, help="fp32/fp16: largest allowed absolute output difference")
    g.add_argument("--min-cosine", type=float, help="smallest allowed output cosine similarity")
    g.add_argument("--min-top1-agreement", type=float, help="int8: smallest top-1 agreement with fp32 (0-1)")
    g.add_argument("--min-top5-overlap", type=float, help="int8: smallest top-5 overlap with fp32 (0-1)")
    g.add_argument("--max-drop", dest="max_top1_drop", type=float,
                   help="int8 with --eval: largest allowed top-1 drop, in percentage points")


def _budget(a: argparse.Namespace) -> dict:
    return {k: getattr(a, k) for k in BUDGET_KEYS if getattr(a, k, None) is not None}


def _add_qat_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization-aware training (with --int8)")
    g.add_argument("--qat", action="store_true",
                   help="fine-tune with fake quantization before the int8 export (see README)")
    g.add_argument("--train", metavar="DIR", help="labelled training images (ImageFolder tree or labels.csv); "
                                                  "without it, distillation from fp32 on the calibration images")
    g.add_argument("--epochs", type=int, help="passes over the training images (default 10)")
    g.add_argument("--lr", type=float, help="learning rate (SGD, cosine decay; default 1e-4)")
    g.add_argument("--max-steps", type=int, help="stop after this many steps (batches of 16)")


def _qat_options(a: argparse.Namespace) -> dict:
    return {"qat": a.qat, "train": a.train, "epochs": a.epochs, "lr": a.lr, "max_steps": a.max_steps}


def parser() -> argparse.ArgumentParser:
    from edge.models import MODELS
    from edge.targets import TARGETS

    p = argparse.ArgumentParser(prog="edge", description="Take a PyTorch model to a phone or a Raspberry Pi.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and converter logs")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="export a model to one or all targets, verified in each runtime")
    b.add_argument("--model", default="efficientnet_lite0",
                   help=f"a registered model ({', '.join(MODELS.names())}) or path/to/file.py:factory")
    b.add_argument("--target", default="tflite", help=f"{', '.join(TARGETS.names())}, or all")
    prec = b.add_mutually_exclusive_group()
    prec.add_argument("--int8", dest="precision", action="store_const", const="int8", help="post-training int8")
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="fp16 weights")
    prec.add_argument("--precision", choices=("fp32", "fp16", "int8"))
    b.add_argument("--weights", default="imagenet", help="imagenet (default), random, or a state-dict file")
    b.add_argument("--calib", help="int8 calibration: a folder of images or a preprocessed .npy (N,C,H,W)")
    b.add_argument("--calib-method", help="calibration method (default: each target's best; see README)")
    b.add_argument("--eval", help="labelled images (ImageFolder tree or folder with labels.csv): "
                                  "adds top-1/top-5 and the drop to the parity check")
    b.add_argument("--io", default="float", choices=("float", "int8"), help="tflite int8: input/output type")
    b.add_argument("--input-shape", type=_shape, help="1,3,H,W (required for a custom model)")
    b.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    b.add_argument("--out", help="output folder (default: out/MODEL)")
    _add_budget_args(b)
    _add_qat_args(b)

    v = sub.add_parser("verify", help="re-run the parity check of an existing build folder (for CI)")
    v.add_argument("out_dir")
    v.add_argument("--eval", help="labelled images to check accuracy on")
    _add_budget_args(v)

    be = sub.add_parser("bench", help="time artifacts (each in a fresh process): size, load, latency, memory")
    be.add_argument("paths", nargs="+", metavar="PATH", help="artifacts, or build folders with manifests")
    be.add_argument("--threads", type=int, help="runtime threads (default: the runtime's own choice)")
    be.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    be.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5)")
    be.add_argument("--pin", metavar="CPUS", help="pin to CPUs with taskset, e.g. 0 or 0-1")
    be.add_argument("--input-shape", type=_shape,
                    help="input shape for an artifact without a manifest: a .ptl, or one with dynamic dims")
    be.add_argument("--json", metavar="FILE", help="also write the results and the machine fingerprint here")
    g = be.add_argument_group("on a device")
    g.add_argument("--device", metavar="DEVICE", help="ssh://user@host[:port] (a real board) or pi-emu "
                   "(the emulated Pi: outputs checked against the host, timings emulated)")
    g.add_argument("--device-python", default="python3", help="ssh: the device's python (default python3)")
    g.add_argument("--ssh-key", metavar="FILE", help="ssh: identity file")
    g.add_argument("--ssh-option", metavar="KEY=VALUE", action="append", default=[],
                   help="ssh: an ssh -o option, e.g. StrictHostKeyChecking=accept-new (repeatable)")

    ex = sub.add_parser("explain", help="per layer: where each artifact of a build parts from PyTorch (SQNR)")
    ex.add_argument("out_dir")
    ex.add_argument("--samples", type=int, default=8, help="held-out built-in samples to compare on (default 8)")
    ex.add_argument("--threshold-db", type=float,
                    help="a layer below this SQNR has parted from PyTorch (default: fp32 40, fp16 25, int8 10)")
    ex.add_argument("--plot", metavar="PNG", help="plot file (default OUT_DIR/explain.png)")
    ex.add_argument("--json", metavar="FILE", help="also write the reports here")
    ex.add_argument("--brief", action="store_true", help="only the marked layers, not every layer")

    dev = sub.add_parser("device", help="tools for running on a device")
    dsub = dev.add_subparsers(dest="device_command", required=True)
    dr = dsub.add_parser("runner", help="write the standalone on-device runner (stdlib + numpy + one runtime)")
    dr.add_argument("--out", required=True, help="folder to write runner.py and its README into")
    ds = dsub.add_parser("setup", help="build the emulated Raspberry Pi (once, as root; cached)")
    ds.add_argument("name", choices=("pi-emu",), help="pi-emu: arm64 Debian Bookworm under QEMU user mode")
    ds.add_argument("--force", action="store_true", help="rebuild it even if it is set up")

    sub.add_parser("models", help="list the registered models")
    sub.add_parser("targets", help="list the targets and the precisions each supports")
    return p


def cmd_build(a: argparse.Namespace) -> int:
    from edge.targets import TARGETS

    targets = tuple(TARGETS.names()) if a.target == "all" else (TARGETS.get(a.target).name,)
    model_name = a.model.split(":")[0].rsplit("/", 1)[-1].removesuffix(".py")
    cfg = BuildConfig(model=a.model, targets=targets, precision=a.precision or "fp32", weights=a.weights,
                      out=a.out or f"out/{model_name}", calib=a.calib, calib_method=a.calib_method,
                      eval=a.eval, io=a.io, input_shape=a.input_shape, budget=_budget(a), opset=a.opset,
                      **_qat_options(a))
    from edge.pipeline import build

    for m in build(cfg):
        print(f"{m['target']:<20} {m['precision']:<5} {m['size_bytes'] / 1e6:8.2f} MB  parity ok  {m['artifact']}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from edge.pipeline import verify

    for r in verify(a.out_dir, a.eval, _budget(a)):
        print(f"{r['artifact']}: parity ok on {r['samples']} samples")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from edge.bench import bench, format_table, write_json

    device = None
    if a.device:
        from edge.device.remote import parse

        device = parse(a.device, a.device_python, tuple(a.ssh_option), a.ssh_key)
    results = bench(a.paths, threads=a.threads, runs=a.runs, warmup=a.warmup, pin=a.pin,
                    input_shape=a.input_shape, progress=not a.quiet, device=device)
    print(format_table(results))
    if a.json:
        write_json(results, a.json)
    return 0


def cmd_explain(a: argparse.Namespace) -> int:
    from edge import manifest as mf
    from edge.explain import explain, format_report, plot, to_json

    reports = explain(a.out_dir, samples=a.samples, threshold_db=a.threshold_db)
    for r in reports:
        print(format_report(r, all_layers=not a.brief) + "\n")
    png = plot(reports, a.plot or Path(a.out_dir) / "explain.png")
    print(f"plot: {png}")
    if a.json:
        try:
            mf.write_json_atomic(Path(a.json), to_json(reports))
        except OSError as e:
            raise UserError(f"cannot write {a.json} ({e.strerror}); pass a writable path") from None
    return 0


def cmd_device(a: argparse.Namespace) -> int:
    if a.device_command == "setup":
        from edge.device import piemu

        root = piemu.setup(force=a.force)
        v = piemu.info(root)["versions"]
        print(f"pi-emu ready in {root}: Debian {piemu.SUITE} {v['machine']}, Python {v['python']}, "
              f"ai-edge-litert {v['ai-edge-litert']}, onnxruntime {v['onnxruntime']}, numpy {v['numpy']}")
        return 0
    from edge.device import write_runner

    try:
        path = write_runner(a.out)
    except OSError as e:
        raise UserError(f"cannot write the runner to {a.out} ({e.strerror}); pass a writable --out") from None
    print(f"wrote {path} and {path.with_name('README.md')}; copy both to the device")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from edge.models import MODELS

    rows = [("name", "params", "MACs", "input", "weights offline", "description")]
    for spec in MODELS:
        params, macs = _count(spec)
        w = spec.weights
        offline = "n/a (random)" if w is None else ("yes" if w.locate() else ("no (download)" if w.fetch else "no"))
        rows.append((spec.name, f"{params / 1e6:.2f}M", f"{macs / 1e6:.0f}M",
                     "x".join(map(str, spec.input_shape())), offline, spec.description))
    _table(rows)
    return 0


def cmd_targets(a: argparse.Namespace) -> int:
    from edge.targets import TARGETS

    rows = [("target", "file", "precisions", "int8 calibration (default first)", "runtime", "not supported")]
    for t in TARGETS:
        rows.append((t.name, t.suffix, ",".join(t.precisions), ",".join(t.calib_methods()), t.runtime,
                     "; ".join(f"{k}: {v}" for k, v in t.unsupported.items()) or "-"))
    _table(rows)
    return 0


def _count(spec) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward pass at the default input size."""
    import torch
    import torch.nn as nn

    model = spec.build()
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(spec.input_shape()))
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


COMMANDS = {"build": cmd_build, "verify": cmd_verify, "bench": cmd_bench, "explain": cmd_explain, "device": cmd_device,
            "models": cmd_models, "targets": cmd_targets}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="edge: %(message)s")
    logging.getLogger().handlers[0].addFilter(lambda r: r.name.startswith("edge"))
    if not args.debug:
        # Third-party deprecation chatter (torch.ao, the TorchScript ONNX exporter) is not the user's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
    try:
        return COMMANDS[args.command](args)
    except EdgeError as e:
        if args.debug:
            raise
        print(f"edge: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
