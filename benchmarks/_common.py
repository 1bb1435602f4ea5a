"""Shared timing helpers: medians of repeated runs, fresh-process timing, optional reference packages."""

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in seconds, after warm-up calls."""

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)

    return statistics.median(times)


def process_time(code: str, repeats: int = 5, env: dict[str, str] | None = None) -> float:
    """Median wall time of ``python -c code`` in fresh interpreters."""

    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=full_env, capture_output=True)
        times.append(time.perf_counter() - start)

    return statistics.median(times)


def report(claim: str, ours: float, anchor_name: str, anchor: float | None, unit: str = "s") -> None:
    """One line per claim: our number, the anchor's, and the ratio (anchor / ours: > 1 means we are faster)."""

    if anchor is None:
        print(f"{claim}: birder_exp {ours:.4f}{unit}; {anchor_name} not importable, ratio skipped")
    else:
        print(f"{claim}: birder_exp {ours:.4f}{unit}, {anchor_name} {anchor:.4f}{unit}, speed-up x{anchor / ours:.2f}")
