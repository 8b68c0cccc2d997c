"""`edge explain OUT_DIR`: where an artifact loses accuracy. For every artifact of a build folder,
each layer's output in the artifact's runtime against the same nn.Module in PyTorch (SQNR, dB),
the first layer where the artifact parts from PyTorch (SQNR below a threshold), and the layers
that lose the most themselves. A table on the terminal, a PNG plot, and JSON.

    edge explain out/efficientnet_lite0                 # table + out/efficientnet_lite0/explain.png
    edge explain out/m --samples 16 --threshold-db 15 --json explain.json
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

from edge import manifest as mf
from edge.errors import UserError

log = logging.getLogger("edge")

# Below these, a layer has parted from PyTorch: fp32 kernels agree to ~1e-6 (100+ dB); fp16 to
# ~1e-3 (50-60 dB); an int8 layer sits at 20-40 dB, and one that fell under 10 dB has lost most of
# its signal (a tenth of its energy is error).
THRESHOLDS_DB = {"fp32": 40.0, "fp16": 25.0, "int8": 10.0}


def explain(out_dir: str | Path, samples: int = 8, threshold_db: float | None = None, model: str | None = None,
            weights: str | None = None) -> list[dict]:
    """One report per artifact under out_dir: {artifact, target, precision, output_sqnr_db,
    threshold_db, layers: [...], first_parting, worst: [...], note}. The PyTorch model comes from
    edge's registry, or, for a user's network (and weights from a file), from `model` (and
    `weights`), checked against the sha256 the build recorded (edge.verification)."""
    import torch

    from edge.models.loading import output_list
    from edge.parity import sqnr_db
    from edge.quantize import sensitivity as sens
    from edge.quantize.calibration import builtin_sets
    from edge.targets import TARGETS
    from edge.verification import artifact_of, load_manifest, reference_model

    if samples < 1:
        raise UserError(f"--samples must be at least 1, not {samples}")
    manifests = mf.find(Path(out_dir))
    if not manifests:
        raise UserError(f"no manifest.json in {out_dir} or its subfolders; is it an `edge build` output folder?")
    reports = []
    cache: dict = {}
    for path in manifests:
        m = load_manifest(path)
        artifact = artifact_of(path, m)
        cfg = (m.get("build") or {}).get("config") or {}
        key = (cfg.get("model"), cfg.get("weights"), str(cfg.get("input_shape")), str(cfg.get("tasks")),
               (m.get("reference_state") or {}).get("sha256"))
        if key not in cache:  # one reference per model, not per target
            spec, net = reference_model(m, model, weights, path.parent)
            _, par = builtin_sets(spec)
            cache[key] = (net, par.head(samples), par.source)
        net, x, source = cache[key]
        threshold = THRESHOLDS_DB[m["precision"]] if threshold_db is None else threshold_db
        log.info("explain: %s (%s %s) on %d samples", artifact.name, m["target"], m["precision"], len(x))
        target = TARGETS.get(m["target"])
        out = target.load(artifact, m).run(x.arrays)
        with torch.no_grad():
            ref = [y.numpy() for y in output_list(net(*[torch.from_numpy(a) for a in x.arrays.values()]))]
        sqnr = {name: sqnr_db(r, out[name]) for name, r in zip(out, ref)}
        layers = target.layer_outputs(artifact, net, x.arrays, m)
        first = sens.first_parting(layers, threshold) if layers else None
        worst = sorted((l for l in layers or [] if l.local_drop_db is not None and l.local_drop_db > 3.0),
                       key=lambda l: -l.local_drop_db)[:5]
        reports.append({
            "artifact": str(artifact), "target": m["target"], "precision": m["precision"],
            "samples": len(x), "sample_source": source, "threshold_db": threshold,
            "output_sqnr_db": next(iter(sqnr.values())), "outputs_sqnr_db": sqnr,
            "layers": [l.to_json() for l in layers] if layers is not None else None,
            "first_parting": first.to_json() if first else None,
            "worst": [l.to_json() for l in worst],
            "note": None if layers is not None else
            f"{m['target']}: the runtime exposes no intermediate tensors; only the output is compared",
        })
    return reports


def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def format_report(r: dict, all_layers: bool = True) -> str:
    lines = [f"{r['artifact']} ({r['target']} {r['precision']}): output SQNR {_db(r['output_sqnr_db'])} dB "
             f"against PyTorch on {r['samples']} samples ({r['sample_source']})"]
    if r["layers"] is None:
        return "\n".join(lines + [f"  {r['note']}"])
    f = r["first_parting"]
    lines.append(f"  first layer below {r['threshold_db']:g} dB: " +
                 (f"{f['module'] or '(model forward)'} ({f['op']}, {_db(f['sqnr_db'])} dB)" if f else
                  "none: every layer stays with PyTorch"))
    if r["worst"]:
        lines.append("  most error added: " + ", ".join(f"{w['module']} (-{w['local_drop_db']:.1f} dB)"
                                                        for w in r["worst"][:3]))
    rows = [("#", "module", "op", "shape", "SQNR dB", "drop dB", "")]
    worst = {w["module"] for w in r["worst"][:3]}
    for i, l in enumerate(r["layers"]):
        mark = "<- parts from PyTorch" if f and l["module"] == f["module"] else \
            ("<- adds much error" if l["module"] in worst else "")
        if all_layers or mark:
            rows.append((str(i), l["module"] or "(forward)", l["op"][:24], "x".join(map(str, l["shape"][1:])),
                         _db(l["sqnr_db"]), "-" if l["local_drop_db"] is None else f"{l['local_drop_db']:.1f}", mark))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "  ".join(c.rjust(w) if k in (0, 4, 5) else c.ljust(w)
                                      for k, (c, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def plot(reports: list[dict], path: str | Path) -> Path:
    """SQNR per layer, one line per artifact, with each threshold and first parting layer."""
    from edge.errors import require

    require("matplotlib", "edge explain's plot", extra="explain")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in reports if r["layers"]]
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=110)
    for r in shown:
        y = [min(l["sqnr_db"], 150.0) for l in r["layers"]]
        line, = ax.plot(range(len(y)), y, marker=".", lw=1, label=f"{r['target']} {r['precision']}")
        f = r["first_parting"]
        if f:
            i = next(k for k, l in enumerate(r["layers"]) if l["module"] == f["module"])
            ax.annotate(f["module"], (i, y[i]), textcoords="offset points", xytext=(5, -12), fontsize=8,
                        color=line.get_color())
            ax.plot([i], [y[i]], "o", ms=9, mfc="none", color=line.get_color())
    for t in sorted({r["threshold_db"] for r in shown}):
        ax.axhline(t, ls="--", lw=0.8, color="grey")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("SQNR vs PyTorch (dB, capped at 150)")
    ax.set_title("edge explain: where each artifact parts from the PyTorch model")
    if shown:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    except OSError as e:
        with contextlib.suppress(OSError):  # a path under a file or a read-only folder: nothing to remove
            tmp.unlink()
        raise UserError(f"cannot write the plot {path} ({e.strerror}); pass --plot with a writable path") from None
    finally:
        plt.close(fig)
    return path


def to_json(reports: list[dict]) -> dict:
    def clean(v):
        if isinstance(v, float) and math.isinf(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return {"schema": "edge-explain/1", "reports": clean(reports), "date": mf.now(),
            "environment": {"machine": mf.machine(), "versions": mf.all_versions()}}

