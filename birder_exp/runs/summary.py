"""The end of a sweep: one row per job (its swept values, status, metric, run directory), printed as a rich table
and written as ``summary.json`` in the sweep directory. Rows come from the jobs' run records, so the table is the
same whichever launcher ran the jobs (in this process, in subprocesses, on SLURM).
"""

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Optional

from birder_exp.runs.record import STATUS_COMPLETED
from birder_exp.runs.record import read_record

SUMMARY_FILE = "summary.json"
# Where the objective comes from, best first (the same order as RunResult.objective)
METRIC_KEYS = ("test/acc", "val/acc")


@dataclass
class JobRow:
    num: int
    overrides: list[str]
    choice: str
    status: str
    metric_name: Optional[str]
    metric: Optional[float]
    run_dir: str
    error: Optional[str] = None


def job_dirs(sweep_dir: str | Path) -> list[tuple[int, Path]]:
    """The numbered job directories of a sweep (Hydra's default ``hydra.sweep.subdir``), in job order."""

    jobs = []
    for path in Path(sweep_dir).iterdir():
        if path.is_dir() and path.name.isdigit() and ((path / ".hydra").is_dir() or (path / "run.json").is_file()):
            jobs.append((int(path.name), path))

    return sorted(jobs)


def _metric(record: dict[str, Any]) -> tuple[Optional[str], Optional[float]]:
    metrics = (record.get("result") or {}).get("metrics") or {}
    for key in METRIC_KEYS:
        if key in metrics:
            return (key, float(metrics[key]))

    return (None, None)


def _split(item: str) -> tuple[str, str]:
    (key, _, value) = item.partition("=")
    return (key, value)


def _varying(overrides: Sequence[list[str]]) -> set[str]:
    """Override keys whose value differs between jobs (all keys when there is a single job)."""

    parsed = [dict(_split(item) for item in items) for items in overrides]
    keys: set[str] = set().union(*parsed) if len(parsed) > 0 else set()
    if len(parsed) <= 1:
        return keys

    return {key for key in keys if len({job.get(key) for job in parsed}) > 1}


def _first_line(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    lines = [line for line in str(text).splitlines() if line.strip() != ""]
    return lines[0] if len(lines) > 0 else None


def collect(sweep_dir: str | Path) -> list[JobRow]:
    found = []
    for num, path in job_dirs(sweep_dir):
        record = read_record(path) or {}
        overrides = list((record.get("hydra") or {}).get("overrides") or [])
        if len(overrides) == 0 and (path / ".hydra" / "overrides.yaml").is_file():
            from omegaconf import OmegaConf

            overrides = [str(v) for v in OmegaConf.load(path / ".hydra" / "overrides.yaml")]
        found.append((num, path, record, overrides))

    varying = _varying([overrides for _, _, _, overrides in found])
    rows = []
    for num, path, record, overrides in found:
        shown = [item for item in overrides if item.split("=", 1)[0] in varying]
        status = str(record.get("status", "no record"))
        (metric_name, metric) = _metric(record)
        rows.append(
            JobRow(
                num=num,
                overrides=overrides,
                choice=" ".join(shown) if len(shown) > 0 else "(defaults)",
                status=status if status != "running" else "interrupted",
                metric_name=metric_name,
                metric=metric,
                run_dir=str(path),
                error=_first_line(record.get("error")),
            )
        )

    return rows


def _display_path(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return relative if not relative.startswith("..") else path


def write_summary(sweep_dir: str | Path, rows: Sequence[JobRow]) -> Path:
    path = Path(sweep_dir) / SUMMARY_FILE
    failed = [row.num for row in rows if row.status != STATUS_COMPLETED]
    data = {"sweep_dir": str(sweep_dir), "jobs": [asdict(row) for row in rows], "failed": failed}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def print_summary(sweep_dir: str | Path, rows: Sequence[JobRow], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    failed = sum(row.status != STATUS_COMPLETED for row in rows)
    title = f"Sweep {_display_path(str(sweep_dir))}: {len(rows) - failed}/{len(rows)} jobs completed"
    table = Table(title=title, title_justify="left")
    for column in ("job", "choice", "status", "metric", "run dir"):
        table.add_column(column, overflow="fold")
    for row in rows:
        metric = f"{row.metric_name} {row.metric:.4f}" if row.metric is not None else "-"
        status = row.status if row.error is None else f"{row.status}: {row.error}"
        style = None if row.status == STATUS_COMPLETED else "red"
        table.add_row(str(row.num), row.choice, status, metric, _display_path(row.run_dir), style=style)

    if console is None:
        # A log file or a pipe is not a terminal: rich would wrap at 80 columns, keep rows on one line instead
        console = Console(width=None if sys.stdout.isatty() else 240)
    console.print(table)


def summarize_sweep(sweep_dir: str | Path, console: Any = None) -> list[JobRow]:
    """Print and write the summary of ``sweep_dir``; returns its rows."""

    rows = collect(sweep_dir)
    write_summary(sweep_dir, rows)
    print_summary(sweep_dir, rows, console)
    return rows
