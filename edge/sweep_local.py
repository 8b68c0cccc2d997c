"""The sweep's default executor: benches in this process one after another; builds likewise, or
`jobs` at a time in worker processes (started fresh, not forked from a process holding torch's
threads). Builds only: the benches start after the last build, so no timing overlaps one."""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from edge.sweep import Cell, Plan, bench_task, build_task


class LocalPool:
    def __init__(self, plan: Plan, jobs: int = 1):
        self.plan, self.jobs = plan, jobs

    def builds(self, todo: list[tuple[Cell, str]]) -> Iterator[tuple[Cell, str, dict]]:
        if self.jobs <= 1 or len(todo) <= 1:
            for cell, key in todo:
                yield cell, key, build_task(self.plan, cell, key)
            return
        # a worker's own progress bars would tangle with the sweep's: it logs warnings and errors only
        level = max(logging.WARNING, logging.getLogger("edge").getEffectiveLevel())
        with ProcessPoolExecutor(min(self.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_logging, initargs=(level,)) as ex:
            futures = {ex.submit(build_task, self.plan, cell, key): (cell, key) for cell, key in todo}
            for f in as_completed(futures):
                cell, key = futures[f]
                try:
                    outcome = f.result()
                except BrokenProcessPool:  # killed (out of memory?): the cell fails, a rerun tries it again
                    outcome = {"error": "its build's worker process died (out of memory?); rerun the sweep, "
                                        "with fewer --jobs"}
                yield cell, key, outcome

    def benches(self, todo: list[tuple]) -> Iterator[tuple[tuple, dict]]:
        for item in todo:
            cell, spec, threads, _key, folder = item
            yield item, bench_task(self.plan, cell, spec, threads, folder=Path(folder))

    def describe(self) -> dict:
        return {"kind": "local", "jobs": self.jobs}


def _worker_logging(level: int) -> None:
    logging.basicConfig(level=level, format="edge: %(message)s", force=True)
