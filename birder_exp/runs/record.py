"""``run.json``: the record birder_exp keeps beside Hydra's ``.hydra/`` in every run directory.

Hydra already saves the composed config, the overrides and the group choices; the record adds what those miss:
the command line, versions and git revisions, the resolved config, the sha256 of pretrained weights, the global
state the job started from, its outcome (status, metrics, checkpoints) and a digest of the final weights. It is
written when the job starts (status ``running``: a killed run keeps it) and updated as the job goes. Processes other
than global rank 0 add only ``rank<N>.json`` files with their own weight digests.
"""

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import Any
from typing import Optional

RECORD_FILE = "run.json"
RECORD_FORMAT = 1
RANKS_DIR = ".birder_exp"
STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RECORD_FILE


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write through a temporary file and rename it: a reader never sees half a record."""

    path.parent.mkdir(parents=True, exist_ok=True)
    (fd, tmp) = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=False, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """The record of ``run_dir``, or None when there is none (a run made before records, or not a run)."""

    path = record_path(run_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None

    return data if isinstance(data, dict) else None


def write_record(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    _write_json(record_path(run_dir), {"format": RECORD_FORMAT, **record})


def update_record(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the record (nested dicts merge one level deep) and write it back."""

    record = read_record(run_dir) or {"format": RECORD_FORMAT}
    for key, value in fields.items():
        current = record.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            record[key] = {**current, **value}
        else:
            record[key] = value
    _write_json(record_path(run_dir), record)
    return record


def mark_finished(run_dir: str | Path, status: str, error: Optional[str] = None) -> None:
    """Set the outcome once: a later, vaguer report (Hydra's "completed" after a caught failure) never overrides it."""

    record = read_record(run_dir) or {}
    if record.get("status") in (STATUS_COMPLETED, STATUS_FAILED):
        return
    fields: dict[str, Any] = {"status": status, "finished": now_iso()}
    if error is not None:
        fields["error"] = error
    update_record(run_dir, **fields)


def write_rank_record(run_dir: str | Path, rank: int, data: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / RANKS_DIR / f"rank{rank}.json"
    _write_json(path, {"rank": rank, **data})
    return path


def read_rank_records(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Every rank's own record (rank 0's lives in run.json and is included here under 0 when it has a digest)."""

    ranks: dict[int, dict[str, Any]] = {}
    folder = Path(run_dir) / RANKS_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("rank*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            ranks[int(data["rank"])] = data
    record = read_record(run_dir)
    if record is not None and record.get("final_weights_sha256") is not None:
        ranks.setdefault(0, {"rank": 0, "final_weights_sha256": record["final_weights_sha256"]})

    return ranks


def replace_strings(data: Any, old: str, new: str) -> Any:
    """``data`` with ``old`` replaced by ``new`` inside every string (e.g. a run directory by a placeholder)."""

    if isinstance(data, str):
        return data.replace(old, new)
    if isinstance(data, Mapping):
        return {key: replace_strings(value, old, new) for key, value in data.items()}
    if isinstance(data, list):
        return [replace_strings(value, old, new) for value in data]

    return data
