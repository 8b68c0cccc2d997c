"""The `edge` command line. Errors become one line and an exit code (2: your input, 1: a
conversion or parity failure); `--debug` shows the traceback.

Start-up stays light: `edge --help`, `edge models` and `edge targets` import no torch (the model
catalog is data, edge/models/catalog.json; targets, quantizers and stages are light modules)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import warnings
from pathlib import Path

from edge import interrupts
from edge.errors import EdgeError, UserError, write_failure

log = logging.getLogger("edge")
EXIT_CODES = "exit codes: 0 ok; 2 your input is wrong (one line says what to do); 1 a conversion or parity failed"


def _shape(s: str):
    """1,3,224,224 (or 1x3x224x224); NAME=SHAPE names the input it is for."""
    name, _, shape = s.rpartition("=")
    try:
        dims = tuple(int(v) for v in shape.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a shape like 1,3,224,224") from None
    return (name, dims) if name else dims


def _task(s: str) -> tuple[str, str]:
    name, _, task = s.rpartition("=")
    return name, task


def _verbosity() -> argparse.ArgumentParser:
    """-q / -v / --debug, accepted before or after the subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="more detail (converter logs on failure)")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="tracebacks instead of one-line errors, and every log line")
    return p


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, where it has one worth showing (not None, False
    or an empty list: an option that is off or unset by default)."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=min(100, max(60, _columns())))

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def _budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parity budgets (defaults come from the model, the precision and each output's task)")
    g.add_argument("--max-abs", type=float, help="fp32/fp16 classification: largest absolute output difference")
    g.add_argument("--max-rel-abs", type=float,
                   help="dense outputs: largest absolute difference relative to the output's largest magnitude")
    g.add_argument("--min-cosine", type=float, help="smallest output cosine similarity (-1 to 1)")
    g.add_argument("--min-sqnr-db", type=float, help="smallest output SQNR, in dB")
    g.add_argument("--min-top1-agreement", type=float, help="int8 classification: smallest top-1 agreement (0-1)")
    g.add_argument("--min-top5-overlap", type=float, help="int8 classification: smallest top-5 overlap (0-1)")
    g.add_argument("--max-drop", dest="max_top1_drop", type=float,
                   help="int8 with --eval: largest top-1 drop, in percentage points (keeps the most sensitive "
                        "layers in float until it is met)")


def _budget(a: argparse.Namespace) -> dict:
    from edge.precisions import BUDGET_KEYS, check_budget

    b = {k: getattr(a, k) for k in BUDGET_KEYS if getattr(a, k, None) is not None}
    check_budget(b)
    return b


def _json_arg(p, what: str) -> None:
    p.add_argument("--json", metavar="FILE", help=f"also write {what} as JSON to FILE ('-': stdout, instead of the table)")


def parser() -> argparse.ArgumentParser:
    from edge import __version__
    from edge.stages import STAGES
    from edge.targets import TARGETS

    common = _verbosity()
    p = argparse.ArgumentParser(prog="edge", description="Take a PyTorch model to a phone or a Raspberry Pi.",
                                epilog=EXIT_CODES, parents=[common], formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=_Formatter,
                              epilog=EXIT_CODES)

    b = command("build", "export a model to one or all targets, each artifact checked in its own runtime")
    b.add_argument("--model", default="efficientnet_lite0",
                   help="a registered model (see `edge models`) or path/to/file.py:factory")
    b.add_argument("--target", action="append", metavar="TARGET",
                   help=f"{', '.join(TARGETS.names())}, or all (the installed ones); repeat it or give a comma "
                        "list for several (default tflite)")
    prec = b.add_mutually_exclusive_group()
    prec.add_argument("--int8", dest="precision", action="store_const", const="int8", help="int8 (post-training, or --qat)")
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="fp16 weights")
    prec.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="precision")
    b.add_argument("--weights", default="imagenet",
                   help="imagenet, random (size, speed and conversion are real; accuracy is not), or a state-dict file")
    b.add_argument("--input-shape", type=_shape, action="append", metavar="[NAME=]SHAPE",
                   help="an input's shape, e.g. 1,3,240,320 (repeat for several inputs; a custom model's "
                        "example_inputs() makes it unnecessary)")
    b.add_argument("--task", type=_task, action="append", metavar="[OUTPUT=]TASK",
                   help="how an output is judged: classification, segmentation, detection, embedding, regression "
                        "or dense (default: (N, classes) outputs are classification, the rest dense)")
    d = b.add_argument_group("data")
    d.add_argument("--calib", help="int8 calibration: a folder of images, an .npy (one input) or an .npz (one array "
                                   "per input name); default: built-in samples")
    d.add_argument("--calib-method", help="calibration method (default: each target's best; see `edge targets`)")
    d.add_argument("--eval", help="labelled data: images (ImageFolder tree or a folder with labels.csv) or an .npz "
                                  "with one array per input and `labels`; adds top-1/top-5 and the drop to the check")
    d.add_argument("--train", metavar="DATA", help="labelled training data (as --eval) for the training stages (--qat)")
    b.add_argument("--io", default="float", choices=("float", "int8"), help="tflite int8: input/output type")
    b.add_argument("--opset", type=int, default=17, help="ONNX opset")
    b.add_argument("--out", help="output folder (default: out/MODEL); each target writes OUT/<target>/")
    _budget_args(b)
    for stage in STAGES.configurable():
        stage.add_arguments(b)

    v = command("verify", "re-run the parity check of a build folder from the check samples it holds (for CI)")
    v.add_argument("out_dir")
    v.add_argument("--eval", help="labelled data to check accuracy on (needs the reference model; see --model)")
    v.add_argument("--model", metavar="FILE.py:FACTORY",
                   help="with --eval, a user's network: the file the build was made from (its sha256 is checked)")
    v.add_argument("--weights", metavar="FILE", help="with --eval, the weights file the build was made with")
    v.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report, one test case per artifact")
    _json_arg(v, "the reports")
    _budget_args(v)

    be = command("bench", "time artifacts (each in a fresh process): size, load, latency, memory")
    be.add_argument("paths", nargs="+", metavar="PATH", help="artifacts, or build folders with manifests")
    be.add_argument("--threads", type=int, help="runtime threads (default: the runtime's own choice)")
    be.add_argument("--runs", type=int, default=50, help="timed runs")
    be.add_argument("--warmup", type=int, default=5, help="warm-up runs")
    be.add_argument("--pin", metavar="CPUS", help="pin to CPUs with taskset, e.g. 0 or 0-1")
    be.add_argument("--input-shape", type=_shape, metavar="[NAME=]SHAPE",
                    help="input shape for an artifact without a manifest: a .ptl, or one with dynamic dims")
    be.add_argument("--profile", action="store_true", help="then as many runs again under the runtime's "
                    "per-operator profiler (TFLite: LiteRT's; onnxruntime's; ExecuTorch's ETDump): time by op type and by node, in the "
                    "table and the JSON")
    _json_arg(be, "the results and the machine fingerprint")
    g = be.add_argument_group("on a device")
    g.add_argument("--device", metavar="DEVICE", help="ssh://user@host[:port] (a real board), pi-emu or pi-emu:trixie "
                   "(the emulated Pi, Bookworm or Trixie (.pte too): outputs checked against the host, "
                   "timings emulated)")
    g.add_argument("--device-python", default="python3", help="ssh: the device's python")
    g.add_argument("--ssh-key", metavar="FILE", help="ssh: identity file")
    g.add_argument("--ssh-option", metavar="KEY=VALUE", action="append", default=[],
                   help="ssh: an ssh -o option, e.g. StrictHostKeyChecking=accept-new (repeatable)")

    ex = command("explain", "per layer: where each artifact of a build parts from PyTorch (SQNR)")
    ex.add_argument("out_dir")
    ex.add_argument("--samples", type=int, default=8, help="held-out built-in samples to compare on")
    ex.add_argument("--threshold-db", type=float,
                    help="a layer below this SQNR has parted from PyTorch (default: fp32 40, fp16 25, int8 10)")
    ex.add_argument("--model", metavar="FILE.py:FACTORY",
                    help="a user's network: the file the build was made from (its sha256 is checked)")
    ex.add_argument("--weights", metavar="FILE", help="the weights file the build was made with")
    ex.add_argument("--plot", metavar="PNG", help="plot file (default OUT_DIR/explain.png)")
    _json_arg(ex, "the reports")
    ex.add_argument("--brief", action="store_true", help="only the marked layers, not every layer")

    dev = command("device", "tools for running on a device")
    dsub = dev.add_subparsers(dest="device_command", required=True, metavar="TOOL")
    dr = dsub.add_parser("runner", help="write the standalone on-device runner (stdlib + numpy + one runtime)",
                         parents=[common], formatter_class=_Formatter)
    dr.add_argument("--out", required=True, help="folder to write runner.py and its README into")
    ds = dsub.add_parser("setup", help="build the emulated Raspberry Pi (once, as root; cached)", parents=[common],
                         formatter_class=_Formatter)
    ds.add_argument("name", choices=("pi-emu", "pi-emu:trixie"),
                    help="pi-emu: arm64 Debian Bookworm (Python 3.11) under QEMU user mode; pi-emu:trixie: "
                         "arm64 Trixie (Python 3.13), which also runs .pte files (executorch-numpy-runtime)")
    ds.add_argument("--force", action="store_true", help="rebuild it even if it is set up")

    sw = command("sweep", "build and time a grid of models, targets, precisions and devices from a plan (TOML); "
                          "resumable")
    sw.add_argument("plan", metavar="PLAN", help="the plan file (see `edge sweep --help` and the README)")
    sw.add_argument("--out", help="output folder (default: the plan's `out`)")
    sw.add_argument("--ray", metavar="auto|ADDRESS", help="run the cells as tasks on a Ray cluster (builds on any "
                    "node; each device's benches on the node offering its resource edge_device_DEVICE)")
    sw.add_argument("--jobs", type=int, default=1, metavar="N", help="run N builds at once, in worker processes "
                    "(default 1; benches always run one at a time, after the builds)")
    sw.add_argument("--retime", action="store_true", help="time every artifact again, rebuilding none, so that all "
                    "the timings come from this run")

    rp = command("report", "a sweep's results as HTML and Markdown, with Pareto fronts; --recommend says what to ship")
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="sweep output folders")
    rp.add_argument("--out", help="where to write report.html and report.md (default: the first DIR)")
    r = rp.add_argument_group("recommendation")
    r.add_argument("--recommend", action="store_true", help="print the artifact to ship under the constraints below")
    r.add_argument("--device", default="host", help="the device to ship to, as named in the plan")
    r.add_argument("--threads", type=int, help="only timings at this thread count")
    r.add_argument("--max-latency-ms", type=float, help="largest p50 latency on the device, ms")
    r.add_argument("--max-size-mb", type=float, help="largest artifact, MB")
    r.add_argument("--max-drop", type=float, help="largest top-1 drop from fp32, percentage points")

    mo = command("models", "list the registered models (from the catalog: nothing is built)")
    _json_arg(mo, "the list")
    ta = command("targets", "list the targets, their precisions, quantizers and what they cannot do")
    _json_arg(ta, "the list")
    return p


# ---------------------------------------------------------------- commands

def cmd_build(a: argparse.Namespace) -> int:
    from edge.config import BuildConfig
    from edge.pipeline import build
    from edge.stages import STAGES

    model_name = a.model.split(":")[0].rsplit("/", 1)[-1].removesuffix(".py")
    stage_options = {k: getattr(a, k) for s in STAGES.configurable() for k in s.Config.options()
                     if getattr(a, k, None) is not None and getattr(a, k) is not False}  # 0 is a value
    cfg = BuildConfig(model=a.model, targets=_targets(a.target), precision=a.precision or "fp32", weights=a.weights,
                      out=a.out or f"out/{model_name}", calib=a.calib, calib_method=a.calib_method, eval=a.eval,
                      train=a.train, io=a.io, input_shape=_input_shapes(a.input_shape), tasks=dict(a.task or ()),
                      budget=_budget(a), opset=a.opset, **stage_options)
    for m in build(cfg):
        print(f"{m['target']:<20} {m['precision']:<5} {m['size_bytes'] / 1e6:8.2f} MB  parity ok  "
              f"{Path(cfg.out) / m['target'] / m['artifact']}")
    return 0


def _input_shapes(shapes):
    """None, one shape, or one per input (named ones in the order given)."""
    if not shapes:
        return None
    plain = [s[1] if isinstance(s[0], str) else s for s in shapes]
    return plain[0] if len(plain) == 1 else tuple(plain)


def _writable(path, flag: str) -> None:
    """Refuse an output file that cannot be written before the work, not after it."""
    import tempfile

    if path is None or str(path) == "-":
        return
    try:
        tempfile.NamedTemporaryFile(dir=Path(path).parent, prefix=".edge-probe-").close()
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); pass {flag} with a writable path") from None


def cmd_verify(a: argparse.Namespace) -> int:
    from edge.errors import ParityError
    from edge.verification import verify

    if (a.model or a.weights) and not a.eval:
        raise UserError("--model and --weights name the reference for an --eval check; add --eval DATA")
    _writable(a.junit, "--junit")
    _writable(a.json, "--json")
    try:
        reports = verify(a.out_dir, a.eval, _budget(a), a.model, a.weights)
    except ParityError as e:
        if a.junit:
            _junit(a.junit, getattr(e, "reports", []), str(e))
        raise
    if a.junit:
        _junit(a.junit, reports, None)
    if a.json:
        _emit_json(a.json, {"schema": "edge-verify/1", "reports": reports})
    if a.json != "-":
        for r in reports:
            print(f"{r['artifact']}: parity ok on {r['samples']} samples")
    return 0


def _junit(path: str, reports: list[dict], failure: str | None) -> None:
    """One JUnit test case per artifact, its figures as properties, so CI shows parity natively."""
    import xml.etree.ElementTree as ET

    failed = sum(not r.get("passed", True) for r in reports) or int(failure is not None)
    suite = ET.Element("testsuite", name="edge verify", tests=str(max(1, len(reports))), failures=str(failed),
                       errors="0")
    for r in reports:
        case = ET.SubElement(suite, "testcase", classname=f"edge.{r.get('target', 'artifact')}", name=r["artifact"])
        props = ET.SubElement(case, "properties")
        for out, o in (r.get("outputs") or {}).items():
            for k, v in o.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    ET.SubElement(props, "property", name=f"{out}.{k}", value=f"{v:.6g}")
        if not r.get("passed", True):
            ET.SubElement(case, "failure", message="; ".join(r.get("failures", [])))
    if failure is not None and not reports:
        case = ET.SubElement(suite, "testcase", classname="edge", name="verify")
        ET.SubElement(case, "failure", message=failure)
    try:
        ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); pass --junit with a writable path") from None


def cmd_bench(a: argparse.Namespace) -> int:
    from edge.benchmark import bench, document, format_profile, format_table

    device = None
    if a.device:
        from edge.device.remote import parse

        device = parse(a.device, a.device_python, tuple(a.ssh_option), a.ssh_key)
    _writable(a.json, "--json")
    results = bench(a.paths, threads=a.threads, runs=a.runs, warmup=a.warmup, pin=a.pin,
                    input_shape=a.input_shape, progress=not _quiet(a), device=device, profile=a.profile)
    if a.json != "-":
        print(format_table(results))
        for r in results if a.profile else ():
            print()
            print(format_profile(r))
    if a.json:
        _emit_json(a.json, document(results))
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from edge.sweep import load_plan, run

    plan = load_plan(a.plan)
    out = a.out or plan.out
    if not out:
        raise UserError(f"{a.plan} names no `out` folder; pass --out DIR")
    if a.jobs < 1:
        raise UserError(f"--jobs {a.jobs}: pass a number of builds to run at once, 1 or more")
    if a.jobs > 1 and a.ray:
        raise UserError("--jobs is for a local run; under --ray, the cluster's CPUs decide how many builds run at once")
    doc = run(plan, Path(out), progress=not _quiet(a), ray=a.ray, jobs=a.jobs, retime=a.retime)
    print(f"{len(doc['rows'])} timings, {len(doc['failed'])} failed, {len(doc['skipped'])} skipped: "
          f"{Path(out) / 'sweep.json'} (next: edge report {out})")
    for f in doc["failed"]:
        print(f"  failed {f['cell']} ({f['stage']}): {f['reason']}")
    return 1 if doc["failed"] else 0


def cmd_report(a: argparse.Namespace) -> int:
    from edge import report

    rows, failed = report.load([Path(d) for d in a.dirs])
    html, md = report.write(rows, failed, Path(a.out or a.dirs[0]))
    print(f"{html}\n{md}")
    if a.recommend:
        rec = report.recommend(rows, a.device, a.max_latency_ms, a.max_size_mb, a.max_drop, threads=a.threads)
        print(("ship: " if rec.choice else "no recommendation: ") + rec.reason)
        return 0 if rec.choice else 1
    return 0


def cmd_explain(a: argparse.Namespace) -> int:
    from edge.explaining import explain, format_report, plot, to_json

    png = Path(a.plot) if a.plot else Path(a.out_dir) / "explain.png"
    if a.plot or png.parent.is_dir():  # no folder: explain says there is no build there
        _writable(png, "--plot")
    _writable(a.json, "--json")
    reports = explain(a.out_dir, samples=a.samples, threshold_db=a.threshold_db, model=a.model, weights=a.weights)
    if a.json != "-":
        for r in reports:
            print(format_report(r, all_layers=not a.brief) + "\n")
    png = plot(reports, png)
    if a.json != "-":
        print(f"plot: {png}")
    if a.json:
        _emit_json(a.json, to_json(reports))
    return 0


def cmd_device(a: argparse.Namespace) -> int:
    if a.device_command == "setup":
        from edge.device import piemu

        suite = piemu.suite_of(a.name)
        root = piemu.setup(force=a.force, suite=suite.name)
        v = dict(piemu.info(root)["versions"])
        machine, python = v.pop("machine"), v.pop("python")
        print(f"{a.name} ready in {root}: Debian {suite.name} {machine}, Python {python}, "
              + ", ".join(f"{k} {x}" for k, x in v.items()))
        return 0
    from edge.device import write_runner

    try:
        path = write_runner(a.out)
    except OSError as e:
        raise UserError(f"cannot write the runner to {a.out} ({e.strerror}); pass a writable --out") from None
    print(f"wrote {path} and {path.with_name('README.md')}; copy both to the device")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from edge.models.catalog import entries, weights_offline

    rows = []
    for e in entries():
        w = e["weights"]
        offline = "random" if w is None else ("offline" if weights_offline(w) else "download" if w.get("fetch")
                                              else "missing")
        rows.append({"name": e["name"], "params": e["params"], "macs": e["macs"],
                     "inputs": e["inputs"], "outputs": e["outputs"], "weights_offline": offline,
                     "description": e["description"]})
    if a.json:
        _emit_json(a.json, {"schema": "edge-models/1", "models": rows})
        if a.json == "-":
            return 0
    _table(["name", "params", "MACs", "inputs", "outputs", "weights", "description"],
           [(r["name"], f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e6:.0f}M",
             "; ".join(f"{'' if i['dtype'] == 'float32' else i['dtype'] + ' '}{'x'.join(map(str, i['shape']))}"
                       for i in r["inputs"]),
             ", ".join(o["task"] for o in r["outputs"]), r["weights_offline"], r["description"]) for r in rows],
           wrap={6})
    return 0


def cmd_targets(a: argparse.Namespace) -> int:
    from edge.quantize import QUANTIZERS
    from edge.targets import TARGETS

    rows = []
    for t in TARGETS:
        q = QUANTIZERS.get(t.quantizer) if t.quantizer else None
        rows.append({"target": t.name, "file": t.suffix, "precisions": list(t.precisions),
                     "quantizer": q.name if q else None, "quantizer_applies_to": q.applies_to if q else None,
                     "calib_methods": list(t.calib_methods()), "runtime": t.runtime,
                     "available": t.available() is None, "why_not": t.available(), "unsupported": t.unsupported})
    if a.json:
        _emit_json(a.json, {"schema": "edge-targets/1", "targets": rows})
        if a.json == "-":
            return 0
    _table(["target", "file", "precisions", "int8 quantizer", "calibration (default first)"],
           [(r["target"], r["file"], ",".join(r["precisions"]), r["quantizer"], ",".join(r["calib_methods"]))
            for r in rows])
    print()
    width = _columns() if sys.stdout.isatty() else 100
    for r in rows:
        notes = [f"{r['target']} cannot do {k}: {v}" for k, v in r["unsupported"].items()]
        notes += [] if r["available"] else [f"{r['target']} is not installed: {r['why_not']}"]
        for note in notes:
            print(textwrap.fill(note, width, subsequent_indent="    ", break_on_hyphens=False))
    return 0


def _table(header: list[str], rows: list[tuple], wrap: set[int] = frozenset()) -> None:
    """A table that fits the terminal (100 columns when not one): the columns in `wrap` wrap, the
    others keep their width."""
    from rich.console import Console
    from rich.table import Table

    width = _columns() if sys.stdout.isatty() else 100
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    cells = [[str(c) for c in r] for r in rows]
    for i, h in enumerate(header):
        if i in wrap:
            table.add_column(h, overflow="fold", ratio=1, min_width=12)
        else:
            longest = max([len(h.split()[0])] + [len(r[i]) for r in cells])
            table.add_column(h, no_wrap=True, min_width=longest)
    for r in cells:
        table.add_row(*r)
    Console(width=width, highlight=False, soft_wrap=False).print(table)


def _emit_json(path: str, data: dict) -> None:
    """--json FILE: written atomically; --json -: to stdout."""
    from edge import manifest as mf

    if path == "-":
        print(json.dumps(data, indent=2, allow_nan=False, default=str))
        return
    try:
        mf.write_json_atomic(Path(path), data)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); pass a writable path") from None


COMMANDS = {"build": cmd_build, "verify": cmd_verify, "bench": cmd_bench, "explain": cmd_explain, "device": cmd_device,
            "sweep": cmd_sweep, "report": cmd_report, "models": cmd_models, "targets": cmd_targets}


def _quiet(a) -> bool:
    return bool(getattr(a, "quiet", False))


def _setup_logging(a: argparse.Namespace) -> None:
    debug = getattr(a, "debug", False)
    level = logging.DEBUG if debug or getattr(a, "verbose", False) else logging.WARNING if _quiet(a) else logging.INFO
    logging.basicConfig(level=level, format="edge: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger().handlers[0].addFilter(lambda r: r.name.startswith("edge"))
    if debug:
        os.environ["EDGE_DEBUG"] = "1"
    else:
        # Third-party deprecation chatter (torch.ao, the TorchScript ONNX exporter) is not the user's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def _targets(given: list[str] | None) -> tuple[str, ...]:
    """--target tflite --target onnx, or --target tflite,onnx (repeats dropped, order kept)."""
    names = [n.strip() for g in (given or ["tflite"]) for n in g.split(",") if n.strip()]
    if "all" in names and len(names) > 1:
        raise UserError("--target all already means every installed target; give it alone")
    return tuple(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _setup_logging(args)
    try:
        with interrupts.watching():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:
        if interrupts.seen() and not getattr(args, "debug", False):  # a library turned Ctrl-C into this
            return _interrupted()
        return _failure(e, args)


def _interrupted() -> int:
    print("edge: interrupted", file=sys.stderr)
    return 130


def _failure(e: Exception, args: argparse.Namespace) -> int:
    """One line and an exit code for an error the user can act on; anything else is re-raised."""
    debug = getattr(args, "debug", False)
    if isinstance(e, EdgeError) and not debug:
        print(f"edge: error: {e}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, MemoryError) and not debug:
        print("edge: error: out of memory; is an input shape larger than intended? (rerun with --debug for where)",
              file=sys.stderr)
        return 2
    if write_failure(e) and not debug:
        where = f" writing {e.filename}" if e.filename else ""
        print(f"edge: error: {e.strerror or 'cannot write'}{where}; free some space or pass another --out "
              "(nothing was published that is not complete)", file=sys.stderr)
        return 1
    raise e


if __name__ == "__main__":
    sys.exit(main())
