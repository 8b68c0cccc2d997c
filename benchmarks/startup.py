"""Start-up: `edge --help`, `edge models` and `edge targets` against an `edge build` of the tiny model
(ONNX, fp32, random weights), each a fresh process, alternating rounds so that machine load hits
all alike; medians, and each listing's time as a fraction of the build's (bar: under 10%). Also
whether each listing imports torch (bar: none does), and its peak memory.

    python benchmarks/startup.py --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, save  # noqa: E402

EDGE = [sys.executable, "-m", "edge.cli"]
# Runs a command in-process and reports whether torch got imported and the peak RSS (VmHWM, kB).
PROBE = """
import sys
import edge.cli
try:
    edge.cli.main(sys.argv[1:])
except SystemExit:
    pass
status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]
print('torch' in sys.modules, status, file=sys.stderr)
"""


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t


def probe(args: list[str]) -> tuple[bool, int]:
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    torch, kb = p.stderr.strip().splitlines()[-1].split()
    return torch == "True", int(kb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    env = environment()
    work = Path(tempfile.mkdtemp(prefix="edge-startup-"))
    commands = {"edge --help": ["--help"], "edge models": ["models"], "edge targets": ["targets"],
                "edge build --model tiny --target onnx": ["-q", "build", "--model", "tiny", "--weights", "random",
                                                          "--target", "onnx", "--out", str(work / "tiny")]}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(a.rounds):
        for name, args in commands.items():
            times[name].append(timed(EDGE + args))
    build = statistics.median(times["edge build --model tiny --target onnx"])
    rows = []
    for name, args in commands.items():
        med = statistics.median(times[name])
        torch, kb = probe(args)
        rows.append({"command": name, "median_s": round(med, 3), "seconds": [round(t, 3) for t in times[name]],
                     "fraction_of_build": round(med / build, 3), "imports_torch": torch, "peak_rss_mb": round(kb / 1024, 1)})
    listings = [r for r in rows if not r["command"].startswith("edge build")]
    passed = all(r["fraction_of_build"] < 0.10 and not r["imports_torch"] for r in listings)
    data = {"rows": rows, "rounds": a.rounds, "bar": "each listing < 10% of the tiny build, no torch import",
            "passed": passed, "environment": env}
    md = [f"# Start-up: listings against a tiny build ({env['date']}, {env['machine']['processor']}, "
          f"{env['machine']['cpu_count']} cores, edge {env['git_commit']})", "",
          f"Medians of {a.rounds} alternating rounds, each command a fresh process.", "",
          "| command | median s | of the build | imports torch | peak RSS MB |", "|---|---|---|---|---|"]
    md += [f"| `{r['command']}` | {r['median_s']:.2f} | {100 * r['fraction_of_build']:.1f}% | "
           f"{'yes' if r['imports_torch'] else 'no'} | {r['peak_rss_mb']} |" for r in rows]
    md += ["", f"Bar (each listing under 10% of the build, none imports torch): {'met' if passed else 'NOT met'}."]
    save("startup", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
