"""The sweep's default executor: every build and bench in this process, one after another."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from edge.sweep import Cell, Plan, bench_task, build_task


class LocalPool:
    def __init__(self, plan: Plan):
        self.plan = plan

    def builds(self, todo: list[tuple[Cell, str]]) -> Iterator[tuple[Cell, str, dict]]:
        for cell, key in todo:
            yield cell, key, build_task(self.plan, cell, key)

    def benches(self, todo: list[tuple]) -> Iterator[tuple[tuple, dict]]:
        for item in todo:
            cell, spec, threads, _key, folder = item
            yield item, bench_task(self.plan, cell, spec, threads, folder=Path(folder))

    def describe(self) -> dict:
        return {"kind": "local"}
