"""What the test suite costs: CPU-seconds per test file and in all, and the wall time, from one pytest run.

Wall time on a shared machine says little (it grows with the load average); CPU-seconds are what a test costs
whatever else runs. The run goes through ``benchmarks/pytest_cpu_times.py`` (a pytest plugin recording each test's
CPU time and that of the child processes it waited for); the total is the whole pytest process tree's
(``RUSAGE_CHILDREN`` after it ended), workers and their children included.

Usage:
    python benchmarks/suite_times.py [--out benchmarks/results/test_suite.md] [--label after] -- -n auto
    python benchmarks/suite_times.py --from times.jsonl --wall 1634 --label before    # a record made earlier

Everything after ``--`` goes to pytest. Prints a markdown table (and appends it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_suite(pytest_args: list[str], record: Path) -> tuple[float, float, int]:
    """Run pytest with the plugin; return (wall seconds, CPU-seconds of the whole process tree, exit status)."""
    env = dict(os.environ, PYTEST_CPU_TIMES=str(record))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-p", "benchmarks.pytest_cpu_times", *pytest_args], cwd=REPO, env=env
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, code


def table(record: Path, label: str, wall: float, total_cpu: float, top: int = 25) -> str:
    """A markdown summary of a ``PYTEST_CPU_TIMES`` record: totals, the costliest files and tests."""
    files: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    tests = []
    for line in record.read_text().splitlines():
        row = json.loads(line)
        if "nodeid" not in row:
            continue
        cpu = row["cpu_s"] + row["children_cpu_s"]
        entry = files[row["nodeid"].split("::")[0]]
        entry[0] += 1
        entry[1] += row["wall_s"]
        entry[2] += cpu
        tests.append((cpu, row["wall_s"], row["nodeid"]))
    in_tests = sum(e[2] for e in files.values())
    lines = [
        f"### {label}",
        "",
        f"{len(tests)} tests; wall {wall:.0f} s; CPU {total_cpu:.0f} s for the whole process tree "
        f"({in_tests:.0f} s inside tests, the rest start-up, collection and workers).",
        "",
        "| test file | tests | CPU s | wall s (summed over its tests) |",
        "|---|---:|---:|---:|",
    ]
    for name, (n, w, c) in sorted(files.items(), key=lambda kv: -kv[1][2])[:top]:
        lines.append(f"| {name} | {n} | {c:.1f} | {w:.1f} |")
    lines += ["", "| costliest tests | CPU s | wall s |", "|---|---:|---:|"]
    for cpu, w, nodeid in sorted(tests, reverse=True)[:10]:
        lines.append(f"| {nodeid} | {cpu:.1f} | {w:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="record", type=Path, help="summarize this PYTEST_CPU_TIMES record")
    parser.add_argument("--wall", type=float, default=0.0, help="with --from: the run's wall seconds")
    parser.add_argument("--cpu", type=float, default=None, help="with --from: the run's total CPU-seconds")
    parser.add_argument("--label", default="run")
    parser.add_argument("--out", type=Path, help="append the table to this markdown file")
    args, rest = parser.parse_known_args()
    pytest_args = rest[1:] if rest[:1] == ["--"] else rest
    if args.record:
        record, wall = args.record, args.wall
        rows = [json.loads(x) for x in record.read_text().splitlines()]
        total = (
            args.cpu if args.cpu is not None else sum(r["cpu_s"] + r["children_cpu_s"] for r in rows if "process" in r)
        )
        code = 0
    else:
        record = Path(tempfile.mkdtemp()) / "times.jsonl"
        wall, total, code = run_suite(pytest_args, record)
    label = args.label if args.record else f"{args.label} (load average at the start: {os.getloadavg()[0]:.1f})"
    text = table(record, label, wall, total)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
