"""Run inside a fresh network and PID namespace (tests/test_sweep_ray.py starts it with
`unshare --net --pid --fork --mount-proc`): loopback is the only address, so the Ray cluster this
starts (a head and a second node, one CPU each, token authentication) is reachable from nothing
else, and every process it leaves behind dies with the namespace. Nothing is stopped by name.

    python tests/ray_cluster.py WORK PLAN [--kill-second-node] [--second-node-resources JSON]
                                          [--timeout SECONDS]

Runs `edge sweep PLAN --ray` against the cluster into WORK/ray (with --kill-second-node, the second
node's raylet is killed with SIGKILL as soon as the first cell is built, then the sweep is run again
to finish), and prints a JSON summary. The head offers the device `host`; the second node offers
--second-node-resources (for example '{"edge_device_pi-emu": 1}': the emulated Pi's benches run
there). benchmarks/sweep_ray_parity.py runs the README's plan this way."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 6390
WORKER_NM_PORT = 6401


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("plan")
    ap.add_argument("--kill-second-node", action="store_true")
    ap.add_argument("--second-node-resources", default=None)
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    work, plan, kill = a.work, a.plan, a.kill_second_node
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # token authentication (Ray's default): one fresh token shared by both nodes and the driver
    env = {**os.environ, "HOME": str(work / "home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    (work / "home").mkdir(parents=True, exist_ok=True)
    # Ray's sockets live under --temp-dir, and a UNIX socket path has at most 107 bytes: a short
    # folder of this run's own (removed at the end), not the test's long tmp_path
    ray_tmp = tempfile.mkdtemp(prefix="edge-ray-", dir="/tmp")
    try:
        run(work, plan, kill, env, ray_tmp, a.second_node_resources, a.timeout)
    finally:
        _stop_cluster()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_cluster() -> None:
    """SIGKILL every other process of this PID namespace: only the cluster this script started
    lives here (we are its init, pid 1). Outside such a namespace, do nothing."""
    if os.getpid() != 1:
        return
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != 1:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.5)


def run(work: Path, plan: str, kill: bool, env: dict, ray_tmp: str, second: str | None = None,
        timeout: float = 900) -> None:
    ray = str(Path(sys.executable).parent / "ray")
    edge = [sys.executable, "-m", "edge.cli"]
    t0 = time.perf_counter()
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--object-store-memory=300000000"]
    _start([ray, "start", "--head", f"--port={PORT}", f"--temp-dir={ray_tmp}", "--include-dashboard=false",
            '--resources={"edge_device_host": 1}', *common], env)
    _start([ray, "start", f"--address=127.0.0.1:{PORT}", f"--node-manager-port={WORKER_NM_PORT}", *common,
            *([f"--resources={second}"] if second else [])], env)
    started = time.perf_counter() - t0
    out = work / "ray"
    argv = [*edge, "sweep", plan, "--out", str(out), "--ray", f"127.0.0.1:{PORT}", "-q"]
    summary = {"cluster_start_s": round(started, 1), "runs": []}
    if kill:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and not list(out.glob("cells/*/*/*/sweep-cell.json")):
            time.sleep(0.2)
        victim = _raylet(WORKER_NM_PORT)
        if victim:
            os.kill(victim, signal.SIGKILL)
        first = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.glob("cells/*/*/*/sweep-cell.json")}
        stdout, stderr = proc.communicate(timeout=timeout)
        summary["killed"] = victim
        summary["finished_before_kill"] = first
        summary["runs"].append({"code": proc.returncode, "stdout": stdout[-2000:], "stderr": stderr[-2000:]})
    if True:  # the (re)run that must finish
        t = time.perf_counter()
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        summary["runs"].append({"code": p.returncode, "stdout": p.stdout[-2000:], "stderr": p.stderr[-2000:],
                                "seconds": round(time.perf_counter() - t, 1)})
    summary["stamps_after"] = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns
                               for p in out.glob("cells/*/*/*/sweep-cell.json")}
    print(json.dumps(summary))


def _start(argv: list[str], env: dict) -> None:
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} failed: {(p.stderr or p.stdout)[-3000:]}")


def _raylet(port: int) -> int | None:
    """The pid of the raylet listening on node manager port `port` (in this PID namespace only)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"raylet") and f"--node_manager_port={port}".encode() in cmd:
            return int(proc.name)
    return None


if __name__ == "__main__":
    main()
