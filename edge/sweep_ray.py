"""The sweep on a Ray cluster (`edge sweep PLAN --ray auto|ADDRESS`): each build is a Ray task of
one CPU on any node; each bench is a task that needs its device's custom resource, of capacity 1
on the node that reaches the device, so benches on one device never overlap:

    ray start --head --resources '{"edge_device_host": 1}'                  # this machine's own CPU
    ray start --address HEAD:6379 --resources '{"edge_device_pi-emu": 1}'    # a node with the emulated Pi

A cell's files travel as bytes: a build returns its folder, a bench is given it, so the nodes
need no shared disk; the plan's data and model files must be at the same paths on every node.
Benches start after every build has finished (as in a local run), and each finished cell is
written to the output folder as it arrives, so a node lost mid-sweep loses no finished cell.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from edge.errors import UserError, require
from edge.sweep import Cell, Plan, bench_task, build_task


def build_with_local_threads(plan: Plan, cell, key: str) -> dict:
    """build_task with the threads a plain `edge sweep` on that node would give torch. Ray sets
    OMP_NUM_THREADS to a task's CPUs (1), and int8 calibration sums floats in an order that depends
    on torch's thread count: EfficientNet-Lite0's .pte built that way differed from the local
    build in 2 of 750 top-1 answers (and a local build with OMP_NUM_THREADS=1 gave the Ray
    artifact byte for byte). The build's own subprocesses lose the setting too."""
    import torch

    os.environ.pop("OMP_NUM_THREADS", None)
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return build_task(plan, cell, key)


def resource(device: str) -> str:
    """The custom resource a node declares for a device: edge_device_host, edge_device_pi-emu..."""
    return "edge_device_" + device.replace("://", "-").replace("/", "-").replace("@", "-")


def _reachable(address: str, seconds: float = 5.0) -> None:
    """Refuse an address nothing answers on at once: ray.init would wait minutes for it."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address}: give auto or HOST:PORT of the cluster's head (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as e:
        raise UserError(f"--ray {address}: no Ray head answers there ({e.strerror or e}); start one with "
                        "`ray start --head`, or pass its HOST:PORT") from None


class RayPool:
    def __init__(self, plan: Plan, address: str):
        self.plan = plan
        ray = require("ray", "edge sweep --ray", extra="ray")
        if address != "auto":
            _reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"--ray {address}: cannot join a Ray cluster ({first}); start one with `ray start --head`, "
                            "or pass its address") from None
        self.ray = ray
        offered = ray.cluster_resources()
        for spec in plan.devices:
            if offered.get(resource(spec), 0) < 1:
                raise UserError(f"no node of the Ray cluster offers device {spec}: start the node that reaches it "
                                f"with ray start --resources '{{\"{resource(spec)}\": 1}}'")
        self.nodes = len([n for n in ray.nodes() if n.get("Alive")])
        self._files: dict = {}  # a built cell's folder -> its files in Ray's object store
        # a worker lost with its node: the task runs again elsewhere (a build or bench is idempotent)
        self._build = ray.remote(num_cpus=1, max_retries=3)(build_with_local_threads)
        self._bench = ray.remote(num_cpus=1, max_retries=3)(bench_task)

    def builds(self, todo: list[tuple[Cell, str]]) -> Iterator[tuple[Cell, str, dict]]:
        pending = {self._build.remote(self.plan, cell, key): (cell, key) for cell, key in todo}
        yield from ((*pending[ref], out) for ref, out in self._as_done(pending))

    def benches(self, todo: list[tuple]) -> Iterator[tuple[tuple, dict]]:
        from edge.sweep import pack

        pending = {}
        for item in todo:
            cell, spec, threads, _key, folder = item
            if folder not in self._files:  # once per cell, whatever the devices, threads and rounds
                self._files[folder] = self.ray.put(pack(folder))
            files = self._files[folder]
            ref = self._bench.options(resources={resource(spec): 1}).remote(self.plan, cell, spec, threads, None, files)
            pending[ref] = item
        yield from ((pending[ref], out) for ref, out in self._as_done(pending))

    def _as_done(self, pending: dict) -> Iterator[tuple[object, dict]]:
        left = list(pending)
        while left:
            ready, left = self.ray.wait(left, num_returns=1)
            ref = ready[0]
            try:
                yield ref, self.ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a task lost past its retries: this cell failed, not the sweep
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                yield ref, {"error": f"Ray task failed: {type(e).__name__}: {first}"}

    def describe(self) -> dict:
        return {"kind": "ray", "nodes": self.nodes, "ray": self.ray.__version__}
