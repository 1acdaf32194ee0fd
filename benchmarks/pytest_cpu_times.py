"""A pytest plugin that records the CPU-seconds each test costs, for ``benchmarks/suite_times.py``.

Use: ``PYTEST_CPU_TIMES=/path/times.jsonl python -m pytest -p benchmarks.pytest_cpu_times ...``. Each test (setup, call
and teardown together) appends one JSON line ``{"nodeid", "wall_s", "cpu_s", "children_cpu_s"}``: ``cpu_s`` is this
process's user+system time (``time.process_time``), ``children_cpu_s`` that of child processes that ended and were
waited for during the test (``resource.getrusage(RUSAGE_CHILDREN)``, plus those that ``tests/zygote.py`` forked and
reaped for it; not the second rank Lightning starts: the zygote forks it and reports it to the first rank, and
without the zygote it is nobody's child once the first exits; ``suite_times.py``'s whole-tree total has it). Under
pytest-xdist every worker appends its own lines (one ``write`` of one short line each, so lines do not interleave).
Wall time on a loaded machine says little; CPU time is what a test costs whatever else runs.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Generator

import pytest


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    zygote = sys.modules.get("tests.zygote")  # children forked by tests/zygote.py: reaped there, not here
    return usage.ru_utime + usage.ru_stime + (zygote.children_cpu() if zygote else 0.0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Generator[None, None, None]:
    path = os.environ.get("PYTEST_CPU_TIMES")
    wall, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    yield
    if not path:
        return
    record = {
        "nodeid": item.nodeid,
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
        "children_cpu_s": round(_children_cpu() - children, 3),
    }
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Append this process's whole CPU time (imports and collection included) as one ``{"process": ...}`` line."""
    path = os.environ.get("PYTEST_CPU_TIMES")
    if not path:
        return
    own = resource.getrusage(resource.RUSAGE_SELF)
    record = {
        "process": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "cpu_s": round(own.ru_utime + own.ru_stime, 3),
        "children_cpu_s": round(_children_cpu(), 3),
    }
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
