"""`edge report DIR...`: the results of sweeps as a self-contained HTML page (tables and inline SVG
plots; nothing is fetched from the network) and a Markdown summary, with the Pareto fronts of
accuracy against latency and against size per device and thread count, and the artifact to ship
under latency, size and accuracy constraints.

A row is one artifact timed on one device at one thread count, as `edge sweep` writes it to
DIR/sweep.json. The accuracy of a group's fronts is top-1 on labelled data when every row of the
group has it, else top-1 agreement with the fp32 PyTorch model (in %); the report says which."""
from __future__ import annotations

import html
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import UserError, require
from edge.manifest import umask_mode

SWEEP = "sweep.json"
SCHEMA = 1
REQUIRED = ("cell", "model", "target", "precision", "device", "size_mb", "parity_passed")
TIE = 0.02  # p50 figures within 2% of the fastest count as a tie, settled by accuracy, then size
BASIS = {"top-1": "top-1 on labelled data (%)", "agreement": "top-1 agreement with the fp32 PyTorch model (%)"}
CSS = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
       "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#eee}"
       "td:nth-child(-n+4){text-align:left}.plots{display:flex;flex-wrap:wrap;gap:1em}svg{max-width:100%}")


def load(dirs: list[Path]) -> tuple[list[dict], list[dict]]:
    """All rows and failed cells of the sweep folders `dirs`, each row's artifact path made relative
    to the working folder (absolute when outside it). Raises UserError for a folder without a
    readable sweep.json."""
    rows: list[dict] = []
    failed: list[dict] = []
    for folder in map(Path, dirs):
        doc = _read_sweep(folder)
        rows += [r | {"artifact": _artifact_path(folder, r.get("artifact")), "sweep": str(folder)} for r in doc["rows"]]
        failed += doc.get("failed") or []
    return rows, failed


def _read_sweep(folder: Path) -> dict:
    path = folder / SWEEP
    if not path.is_file():
        raise UserError(f"{folder} has no {SWEEP}; run `edge sweep PLAN --out {folder}` first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("rows"), list):
        raise UserError(f"{path} is not an edge sweep (schema {SCHEMA} with a list of rows)")
    for i, r in enumerate(doc["rows"]):
        missing = [k for k in REQUIRED if not isinstance(r, dict) or k not in r]
        if missing:
            raise UserError(f"{path}: row {i} has no {', '.join(missing)}; is it an edge sweep?")
    return doc


def _artifact_path(folder: Path, artifact: str | None) -> str | None:
    if artifact is None:
        return None
    path = Path(os.path.abspath(folder / artifact))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, sorted by x: x is minimised (latency, size),
    y maximised (accuracy). Identical points are all on the front."""
    front: list[int] = []
    best_y, best_x = -math.inf, None
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        x, y = points[i]
        if y > best_y or (y == best_y and x == best_x):  # the second: a twin of the last point on the front
            front.append(i)
            best_y, best_x = y, x
    return front


@dataclass(frozen=True)
class Group:
    """The rows of one device at one thread count, the accuracy its fronts use ("top-1" or
    "agreement") and its fronts (rows by increasing p50 latency, by increasing size)."""

    device: str
    threads: int | None
    basis: str
    rows: tuple[dict, ...]
    latency_front: tuple[dict, ...]
    size_front: tuple[dict, ...]

    @property
    def title(self) -> str:
        return f"{self.device}, {_threads(self.threads)}"


def groups(rows: list[dict]) -> list[Group]:
    """The rows by (device, threads), each group with its fronts; emulated or failed timings are
    left out of the latency front."""
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["device"], r.get("threads")), []).append(r)
    ordered = sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0))
    return [_group(device, threads, rs) for (device, threads), rs in ordered]


def _group(device: str, threads: int | None, rows: list[dict]) -> Group:
    basis = _basis(rows)
    return Group(device, threads, basis, tuple(rows), _front(rows, _p50, basis), _front(rows, _size, basis))


def _unscored(g: Group) -> str:
    n = sum(r.get("top1") is None for r in g.rows) if g.basis == "top-1" else 0
    return f" {n} artifact{'s' if n != 1 else ''} without top-1 on labelled data (no --eval) not on the fronts." if n else ""


def _front(rows: list[dict], x, basis: str) -> tuple[dict, ...]:
    """The rows on the front of accuracy against x, by increasing x; rows without either, and rows
    that missed their parity budget (not shippable), left out."""
    shown = [r for r in rows if x(r) is not None and accuracy(r, basis) is not None and r.get("parity_passed", True)]
    return tuple(shown[i] for i in pareto_front([(x(r), accuracy(r, basis)) for r in shown]))


def _basis(rows: list[dict]) -> str:
    """top-1 on labelled data when any row has it (agreement with fp32 is not comparable across
    models: rows without top-1 then stay off the fronts), else agreement."""
    return "top-1" if any(r.get("top1") is not None for r in rows) else "agreement"


def accuracy(row: dict, basis: str) -> float | None:
    """The row's accuracy in %: top-1 (basis "top-1") or top-1 agreement x 100; None if unknown."""
    if basis == "top-1":
        return row.get("top1")
    return None if row.get("agreement") is None else row["agreement"] * 100


def _p50(row: dict) -> float | None:
    """p50 in ms, or None when it was not measured or says nothing (an emulated device)."""
    return None if row.get("emulated") else row.get("p50_ms")


def _size(row: dict) -> float | None:
    return row.get("size_mb")


# ---------------------------------------------------------------- tables, Markdown and HTML

def vs_fp32(row: dict, rows: list[dict]) -> float | None:
    """The row's p50 over the p50 of the fp32 artifact of the same model and target, timed on the
    same device at the same threads in the same sweep (None for fp32 itself, or without one)."""
    if row["precision"] == "fp32" or _p50(row) is None:
        return None
    base = next((r for r in rows if r["precision"] == "fp32" and _p50(r) and all(
        r.get(k) == row.get(k) for k in ("model", "target", "device", "threads", "sweep"))), None)
    return None if base is None else row["p50_ms"] / base["p50_ms"]


def _artifacts(rows: list[dict]) -> list[list[dict]]:
    """The rows grouped by artifact (a cell of a sweep), in model, target, precision order."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r.get("sweep"), r["cell"]), []).append(r)
    return sorted(by.values(), key=lambda rs: (str(rs[0]["model"]), rs[0]["target"], rs[0]["precision"],
                                               str(rs[0].get("sweep"))))


def _columns(gs: list[Group]) -> tuple[list[str], list[Group], list[Group]]:
    """The results table's headers: the artifact, p50/p90 per timed group, the ratio to fp32 in the
    first timed group, accuracy, and the outputs on each emulated device."""
    timed = [g for g in gs if not all(r.get("emulated") for r in g.rows)]
    emulated = [g for g in gs if all(r.get("emulated") for r in g.rows)]
    headers = ["model", "target", "precision", "stages", "size MB",
               *(f"p50 / p90 ms, {g.device} {_threads(g.threads, short=True)}t" for g in timed),
               *([f"p50 vs fp32, {timed[0].device} {_threads(timed[0].threads, short=True)}t"] if timed else []),
               "top-1 %", "drop pp", "agreement", "parity",
               *(f"outputs on {g.device} (emulated)" for g in emulated), "on a latency front", "under load"]
    return headers, timed, emulated


def _table(gs: list[Group], rows: list[dict]) -> list[list[str]]:
    """One row per artifact: its figures, and its timings in each group side by side."""
    _, timed, emulated = _columns(gs)
    fronts = {id(r): g for g in gs for r in g.latency_front}
    out = []
    for rs in _artifacts(rows):
        r = rs[0]
        at = {(x["device"], x.get("threads")): x for x in rs}
        cells = [r["model"] or "-", r["target"], r["precision"], " > ".join(r.get("stages") or []) or "-",
                 _num(r["size_mb"])]
        for g in timed:
            x = at.get((g.device, g.threads))
            cells.append("-" if x is None or x.get("p50_ms") is None else f"{_num(x['p50_ms'])} / {_num(x.get('p90_ms'))}")
        if timed:
            x = at.get((timed[0].device, timed[0].threads))
            ratio = None if x is None else vs_fp32(x, list(timed[0].rows))
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        cells += [_num(r.get("top1")), _num(r.get("drop_pp")), _num(r.get("agreement"), 3),
                  "pass" if all(x["parity_passed"] for x in rs) else "FAIL"]
        for g in emulated:
            x = at.get((g.device, g.threads))
            dp = (x or {}).get("device_parity")
            cells.append("-" if not dp else ("pass" if dp.get("passed") else "FAIL") +
                         (f" (cosine {dp['min_cosine']:.5f})" if dp.get("min_cosine") is not None else ""))
        cells += [", ".join(f"{fronts[id(x)].device} {_threads(fronts[id(x)].threads, short=True)}t"
                            for x in rs if id(x) in fronts),
                  ", ".join(f"{x['device']} {_threads(x.get('threads'), short=True)}t" for x in rs if x.get("under_load"))]
        out.append(cells)
    return out


def _blocks(rows: list[dict], failed: list[dict]) -> list[tuple]:
    """The report as blocks that both formats render: ("h1"|"h2"|"h3"|"p", text), ("table", headers,
    rows) and ("plots", group, n); a table without rows reads "None."."""
    gs = groups(rows)
    summary = (f"{len(_artifacts(rows))} artifacts, {len(rows)} results in {len(gs)} groups by device and threads "
               f"({'; '.join(g.title for g in gs) or 'none'}); failed cells: {len(failed)}.")
    blocks: list[tuple] = [("h1", "edge report"), ("p", summary), ("h2", "Results"),
                           ("p", "One row per artifact; its timings on each device and thread count side by side."),
                           ("table", _columns(gs)[0], _table(gs, rows))]
    for n, g in enumerate(gs):
        acc = f"{g.basis} %"
        blocks += [("h2", f"Fronts on {g.title}"), ("p", f"Accuracy: {BASIS[g.basis]}." + _unscored(g)), ("plots", g, n),
                   ("h3", "Accuracy against p50 latency, in order"),
                   ("table", ("#", "artifact", "p50 ms", acc), _front_table(g.latency_front, _p50, g.basis)),
                   ("h3", "Accuracy against size, in order"),
                   ("table", ("#", "artifact", "size MB", acc), _front_table(g.size_front, _size, g.basis))]
    failures = [[f.get("cell", "?"), f.get("reason", "")] for f in failed]
    return blocks + [("h2", "Failed cells"), ("table", ("cell", "reason"), failures)]


def _front_table(front: tuple[dict, ...], x, basis: str) -> list[list[str]]:
    return [[str(i), _name(r), _num(x(r)), _num(accuracy(r, basis))] for i, r in enumerate(front, 1)]


def markdown(rows: list[dict], failed: list[dict]) -> str:
    """The Markdown summary: every result, each group's fronts in order, the failed cells."""
    tabulate = require("tabulate", "edge report's tables", extra="report").tabulate
    out = []
    for kind, *rest in _blocks(rows, failed):
        if kind == "table":
            headers, table = rest
            table = [[re.sub(r"\s*\n\s*", " ", c).replace("|", "\\|") for c in r] for r in table]  # a row a line
            out.append(tabulate(table, headers, tablefmt="github", disable_numparse=True) if table else "None.")
        elif kind != "plots":
            out.append({"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[kind] + rest[0])
    return "\n\n".join(out) + "\n"


def html_page(rows: list[dict], failed: list[dict]) -> str:
    """The HTML report: every result, and per group two inline SVG plots and the fronts in order."""
    out = []
    for kind, *rest in _blocks(rows, failed):
        if kind == "table":
            out.append(_html_table(*rest) if rest[1] else "<p>None.</p>")
        elif kind == "plots":
            g, n = rest
            out += ['<div class="plots">', _svg_plot(g, _p50, "p50 latency (ms)", f"edge-report-{n}-latency"),
                    _svg_plot(g, _size, "size (MB)", f"edge-report-{n}-size"), "</div>"]
        else:
            out.append(f"<{kind}>{_esc(rest[0])}</{kind}>")
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>edge report</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(out) + "\n</body>\n</html>\n")


def _html_table(headers, rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _esc(text: str) -> str:
    return html.escape(str(text))


def _svg_plot(g: Group, x, xlabel: str, salt: str) -> str:
    """Accuracy against x for a group's rows as inline SVG: the front marked, joined by a step line
    and labelled. Text is drawn as paths, so the page needs no font."""
    shown = [r for r in g.rows if x(r) is not None and accuracy(r, g.basis) is not None]
    if not shown:
        return f"<p>No points for {_esc(xlabel)} (no real timings or no accuracy).</p>"
    require("matplotlib", "edge report's plots", extra="report")
    import matplotlib
    from matplotlib.figure import Figure

    front = _front(g.rows, x, g.basis)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([x(r) for r in shown], [accuracy(r, g.basis) for r in shown], s=18, color="0.6", label="artifact")
    fx, fy = [x(r) for r in front], [accuracy(r, g.basis) for r in front]
    ax.step(fx, fy, where="post", color="C0", lw=1)
    ax.scatter(fx, fy, s=40, marker="D", color="C0", label="Pareto front", zorder=3)
    for r, px, py in zip(front, fx, fy):
        ax.annotate(_name(r), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=xlabel, ylabel=f"{g.basis} (%)", title=g.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.StringIO()
    # a salt per plot: the same page for the same rows, and no element id shared by two plots
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg[svg.index("<svg"):], flags=re.S)


def write(rows: list[dict], failed: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """Write report.html and report.md in `out_dir`, each atomically; returns their paths."""
    out_dir = Path(out_dir)
    page, summary = html_page(rows, failed), markdown(rows, failed)  # both made before either is written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return _write_atomic(out_dir / "report.html", page), _write_atomic(out_dir / "report.md", summary)
    except OSError as e:
        raise UserError(f"cannot write the report in {out_dir} ({e.strerror}); pass a writable folder") from None


def _write_atomic(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------- recommendation

@dataclass(frozen=True)
class Recommendation:
    """The row to ship, the next best, and one or two sentences that say why (or why nothing)."""

    choice: dict | None
    runner_up: dict | None
    reason: str


@dataclass(frozen=True)
class _Limit:
    flag: str
    bound: float
    unit: str
    best: str  # what the best row for this limit alone is called in a message
    missing: str  # what a row without a value has not: "no artifact has {missing}"
    value: Callable[[dict], float | None]

    def meets(self, row: dict) -> bool:
        v = self.value(row)
        return v is not None and v <= self.bound

    def miss(self, row: dict) -> str:
        v = self.value(row)
        got = f"no {self.missing}" if v is None else f"{_num(v)} {self.unit}"
        return f"{self.flag} {self.bound:g} ({got})"


def recommend(rows: list[dict], device: str, max_latency_ms: float | None, max_size_mb: float | None,
              max_drop: float | None, threads: int | None = None) -> Recommendation:
    """The fastest row on `device` (at `threads`, if given) whose parity passed and which meets every
    constraint given: p50 <= max_latency_ms, size <= max_size_mb, top-1 drop <= max_drop (pp).
    p50 figures within 2% are a tie, settled by higher accuracy, then smaller size. Raises
    UserError for an unknown device or thread count, or a bad constraint."""
    limits = _limits(max_latency_ms, max_size_mb, max_drop)
    pool = _device_rows(rows, device, threads)
    where = device if threads is None else f"{device} at {_threads(threads)}"
    candidates = [r for r in pool if r["parity_passed"] and (max_latency_ms is None or _p50(r) is not None)]
    if not candidates:
        if not any(r["parity_passed"] for r in pool):
            return Recommendation(None, None, f"nothing to recommend on {where}: no artifact passed its parity check")
        return Recommendation(None, None, f"nothing meets --max-latency-ms {max_latency_ms:g}: no artifact on "
                                          f"{where} has a real timing (emulated or failed timings say nothing)")
    feasible = [r for r in candidates if all(lim.meets(r) for lim in limits)]
    if not feasible:
        return Recommendation(None, None, _nothing_meets(candidates, limits, where))
    ranked = _rank(feasible)
    runner_up = ranked[1] if len(ranked) > 1 else None
    return Recommendation(ranked[0], runner_up, _why(ranked[0], runner_up, feasible))


def _limits(max_latency_ms: float | None, max_size_mb: float | None, max_drop: float | None) -> list[_Limit]:
    for flag, v in (("--max-latency-ms", max_latency_ms), ("--max-size-mb", max_size_mb)):
        if v is not None and not (0 < v < math.inf):
            raise UserError(f"{flag} must be a positive number (got {v})")
    if max_drop is not None and not math.isfinite(max_drop):
        raise UserError(f"--max-drop must be a number of percentage points (got {max_drop})")
    limits = [_Limit("--max-latency-ms", max_latency_ms, "ms", "fastest artifact", "real timing", _p50),
              _Limit("--max-size-mb", max_size_mb, "MB", "smallest artifact", "size figure", _size),
              _Limit("--max-drop", max_drop, "pp", "smallest top-1 drop",
                     "accuracy on labelled data; build with --eval", lambda r: r.get("drop_pp"))]
    return [lim for lim in limits if lim.bound is not None]


def _device_rows(rows: list[dict], device: str, threads: int | None) -> list[dict]:
    devices = sorted({r["device"] for r in rows})
    if device not in devices:
        raise UserError(f"no results for device {device!r}; the results are for: {', '.join(devices) or 'nothing'}")
    pool = [r for r in rows if r["device"] == device]
    if threads is None:
        return pool
    present = sorted({r.get("threads") for r in pool}, key=lambda t: (t is not None, t or 0))
    if threads not in present:
        raise UserError(f"no results on {device} at {_threads(threads)}; it was timed at: "
                        + ", ".join(_threads(t) for t in present))
    return [r for r in pool if r.get("threads") == threads]


def _speed(row: dict) -> float:
    p50 = _p50(row)
    return math.inf if p50 is None else p50


def _rank(rows: list[dict]) -> list[dict]:
    """Fastest first; p50 within TIE of the fastest left is a tie, settled by accuracy, then size."""
    basis, left, ranked = _basis(rows), list(rows), []
    worse = (lambda r: -a if (a := accuracy(r, basis)) is not None else math.inf)  # unknown: the worst
    bigger = (lambda r: math.inf if r["size_mb"] is None else r["size_mb"])
    while left:
        fastest = min(map(_speed, left))
        tied = [r for r in left if _speed(r) <= fastest * (1 + TIE)]
        best = min(tied, key=lambda r: (worse(r), bigger(r), _speed(r)))
        ranked.append(best)
        left.remove(best)
    return ranked


def _nothing_meets(candidates: list[dict], limits: list[_Limit], where: str) -> str:
    alone = [lim for lim in limits if not any(lim.meets(r) for r in candidates)]
    if alone:
        return "; ".join(_unmet(lim, candidates, where) for lim in alone)
    # the closest: the fewest constraints missed, then the first in the order a choice is made in
    closest = min(_rank(candidates), key=lambda r: sum(not lim.meets(r) for lim in limits))
    missed = " and ".join(lim.miss(closest) for lim in limits if not lim.meets(closest))
    return (f"each constraint is met by some artifact on {where}, but none meets them all together; "
            f"the closest is {_name(closest)}, which misses {missed}")


def _unmet(lim: _Limit, candidates: list[dict], where: str) -> str:
    known = [r for r in candidates if lim.value(r) is not None]
    if not known:
        return f"nothing meets {lim.flag} {lim.bound:g}: no artifact has {lim.missing}"
    best = min(known, key=lim.value)
    text = (f"nothing meets {lim.flag} {lim.bound:g}: the {lim.best} on {where} is {_name(best)} "
            f"at {_num(lim.value(best))} {lim.unit}")
    if len(known) < len(candidates):
        text += f" ({len(candidates) - len(known)} more have no {lim.missing})"
    return text


def _why(choice: dict, runner_up: dict | None, feasible: list[dict]) -> str:
    n = len(feasible)
    if n == 1:
        rank = "the only artifact that meets every constraint"
    elif _speed(choice) == math.inf:
        rank = f"the most accurate of {n} artifacts that meet every constraint (none has a real timing)"
    elif any(_speed(r) < _speed(choice) for r in feasible):
        rank = f"within 2% of the fastest of {n} artifacts that meet every constraint, and more accurate or smaller"
    else:
        rank = f"the fastest of {n} artifacts that meet every constraint"
    text = f"{_name(choice)}: {_figures(choice)}, {rank}"
    if runner_up is not None:
        p50 = _p50(runner_up)
        text += f"; runner-up {_name(runner_up, like=choice)} " + (f"at {_num(p50)} ms" if p50 is not None else
                                                                  f"at {_num(runner_up['size_mb'])} MB")
    return text + "."


def _figures(row: dict) -> str:
    p50 = _p50(row)
    timing = f"{_num(p50)} ms p50" if p50 is not None else "no real timing"
    drop = row.get("drop_pp")
    acc = (f"top-1 drop {_num(drop)} pp" if drop is not None else
           f"agreement {_num(row['agreement'], 3)}" if row.get("agreement") is not None else "accuracy unknown")
    return f"{timing} on {row['device']} ({_threads(row.get('threads'))}), {_num(row['size_mb'])} MB, {acc}"


def _name(row: dict, like: dict | None = None) -> str:
    """"model target precision"; without the model when it is `like`'s."""
    same = like is not None and like["model"] == row["model"]
    return " ".join([*(() if same else (row["model"] or "-",)), row["target"], row["precision"]])


def _threads(threads: int | None, short: bool = False) -> str:
    if threads is None:
        return "default" if short else "runtime default threads"
    return str(threads) if short else f"{threads} thread{'s' if threads != 1 else ''}"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
