"""The README's plan run under `edge sweep --ray` on a two-node Ray cluster, against the local run
of the same plan: the same cells, the same failed and skipped ones, the same artifacts (sha256)
and the same figures (size, top-1, drop, agreement, parity, the emulated Pi's outputs), timings
aside.

The cluster is the tests' (tests/ray_cluster.py): a head and a second node of one CPU each, on
127.0.0.1 inside a network and PID namespace of its own (root, `unshare`), token authentication.
The head offers the device `host`; the second node offers `pi-emu` (the emulated Pi's root is
this machine's, through EDGE_PI_EMU_ROOT). The local run must exist first:

    edge sweep benchmarks/plans/readme.toml --jobs 2
    python benchmarks/sweep_ray_parity.py [--plan benchmarks/plans/readme.toml] [--local DIR] [--work DIR]

--work (default benchmarks/sweeps/readme-ray) is reused: a rerun resumes the Ray sweep there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save  # noqa: E402

from edge.device.piemu import cache_root  # noqa: E402

HERE = Path(__file__).parent
FIGURES = ("size_mb", "top1", "drop_pp", "agreement", "parity_passed", "device_parity", "emulated")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_by_key(out: Path) -> tuple[dict, dict]:
    doc = json.loads((out / "sweep.json").read_text())
    rows = {(r["cell"], r["device"], r["threads"]): r for r in doc["rows"]}
    return rows, doc


def compare(local: Path, ray: Path) -> dict:
    lrows, ldoc = rows_by_key(local)
    rrows, rdoc = rows_by_key(ray)
    out = {"only_local": sorted(map(str, set(lrows) - set(rrows))), "only_ray": sorted(map(str, set(rrows) - set(lrows))),
           "failed": {"local": sorted(f["cell"] for f in ldoc["failed"]), "ray": sorted(f["cell"] for f in rdoc["failed"])},
           "skipped": {"local": sorted((s["cell"], s["device"]) for s in ldoc["skipped"]),
                       "ray": sorted((s["cell"], s["device"]) for s in rdoc["skipped"])},
           "rows": [], "executor": rdoc.get("executor")}
    for key in sorted(set(lrows) & set(rrows), key=str):
        lr, rr = lrows[key], rrows[key]
        la, ra = local / lr["artifact"], ray / rr["artifact"]
        diffs = {k: [lr.get(k), rr.get(k)] for k in FIGURES if lr.get(k) != rr.get(k)}
        out["rows"].append({"cell": key[0], "device": key[1], "threads": key[2], "same_sha256": sha256(la) == sha256(ra),
                            "figures_differ": diffs, "p50_ms": [lr.get("p50_ms"), rr.get("p50_ms")],
                            "ray_node": rr.get("node")})
    return out


def markdown(c: dict, env: dict, seconds: float) -> str:
    artifacts = {}
    for r in c["rows"]:  # one line per artifact (its rows on every device and thread count agree on sha256)
        a = artifacts.setdefault(r["cell"], {"sha": set(), "diffs": {}})
        a["sha"].add(r["same_sha256"])
        a["diffs"].update(r["figures_differ"])
    same_sha = sum(all(a["sha"]) for a in artifacts.values())
    same_fig = sum(not a["diffs"] for a in artifacts.values())
    lines = ["# The README's plan under `edge sweep --ray` (two-node local cluster) vs the local run", "",
             f"Machine: {env['machine'].get('processor')}, {env['machine'].get('cpu_count')} CPUs; git {env['git_commit']}; {env['date']}. Ray run: {seconds / 60:.0f} min "
             f"(builds and benches; timings aside: the two nodes share this machine's 2 cores).", "",
             f"- Rows (cell, device, threads): {len(c['rows'])} in both; only local: {len(c['only_local'])}; "
             f"only Ray: {len(c['only_ray'])}.",
             f"- Failed cells: local {c['failed']['local'] or 'none'}, Ray {c['failed']['ray'] or 'none'}.",
             f"- Skipped (cell, device): {'the same' if c['skipped']['local'] == c['skipped']['ray'] else 'DIFFERENT'} "
             f"(local {len(c['skipped']['local'])}, Ray {len(c['skipped']['ray'])}).",
             f"- Artifacts byte-identical (sha256): {same_sha} of {len(artifacts)}.",
             f"- Figures identical ({', '.join(FIGURES)}): {same_fig} of {len(artifacts)} artifacts.", "",
             "| cell | same sha256 | figures that differ (local, Ray) |", "|---|---|---|"]
    for cell, a in sorted(artifacts.items()):
        diffs = "; ".join(f"{k}: {v[0]} vs {v[1]}" for k, v in a["diffs"].items()) or "none"
        lines.append(f"| {cell} | {'yes' if all(a['sha']) else 'no'} | {diffs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", type=Path, default=HERE / "plans" / "readme.toml")
    ap.add_argument("--local", type=Path, default=HERE / "sweeps" / "readme")
    ap.add_argument("--work", type=Path, default=HERE / "sweeps" / "readme-ray")
    ap.add_argument("--timeout", type=float, default=4 * 3600)
    a = ap.parse_args()
    if not (a.local / "sweep.json").is_file():
        sys.exit(f"no local run in {a.local}: run `edge sweep {a.plan}` first")
    if os.geteuid() != 0:
        sys.exit("the cluster runs in a network namespace of its own: run as root")
    a.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EDGE_PI_EMU_ROOT": str(cache_root())}
    t0 = time.perf_counter()
    p = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable,
                        str(HERE.parent / "tests" / "ray_cluster.py"), str(a.work.resolve()), str(a.plan.resolve()),
                        "--second-node-resources", '{"edge_device_pi-emu": 1}', "--timeout", str(a.timeout)],
                       capture_output=True, text=True, env=env, cwd=HERE.parent)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"the Ray run failed: {p.stderr[-3000:]}")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    c = compare(a.local, a.work / "ray")
    e = environment()
    save("sweep_ray_parity", {"environment": e, "seconds": round(seconds), "cluster": summary, "comparison": c},
         markdown(c, e, seconds))


if __name__ == "__main__":
    main()
