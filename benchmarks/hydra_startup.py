"""Claims: `python -m birder_exp.train --cfg job model=vit_l14_pn` takes <= 1 s in a fresh process and never
imports torch; a `-m` sweep over 50 model options with dry_run=true (compose, build on the meta device, no
data) costs <= 0.15 s per job after the first."""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO

from birder_exp.model_registry import Task
from birder_exp.model_registry import registry

CFG_JOB = ["--cfg", "job", "model=vit_l14_pn"]
SWEEP_SIZE = 50


def _train(args: list[str], cwd: Path, extra: tuple[str, ...] = ()) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *extra, "-m", "birder_exp.train", *args],
        check=True,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    return (time.perf_counter() - start, proc)


def _torch_imported(importtime_stderr: str) -> bool:
    return any(line.rstrip().endswith("| torch") for line in importtime_stderr.splitlines())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (_, traced) = _train(CFG_JOB, cwd, extra=("-X", "importtime"))
        torch_imported = _torch_imported(traced.stderr)
        cfg_job = statistics.median(_train(CFG_JOB, cwd)[0] for _ in range(7))
        interpreter = statistics.median(_timed([sys.executable, "-c", "pass"], cwd) for _ in range(7))
        verdict = "met" if cfg_job <= 1.0 and torch_imported is False else "MISSED"
        print(
            f"hydra startup (--cfg job model=vit_l14_pn, fresh process): birder_exp {cfg_job:.4f}s, "
            f"target <= 1.0s ({verdict}); torch imported: {'yes' if torch_imported else 'no'}; "
            f"bare interpreter {interpreter:.4f}s"
        )

        names = registry.list_models(task=Task.IMAGE_CLASSIFICATION)[:SWEEP_SIZE]
        one = statistics.median(_train(["-m", f"model={names[0]}", "dry_run=true"], cwd)[0] for _ in range(3))
        (many, proc) = _train(["-m", f"model={','.join(names)}", "dry_run=true"], cwd)
        built = proc.stdout.count("built on the meta device")
        per_job = (many - one) / (len(names) - 1)
        verdict = "met" if per_job <= 0.15 and built == len(names) else "MISSED"
        print(
            f"hydra sweep (-m, {len(names)} model options, dry_run=true): birder_exp {per_job:.4f}s per job after the "
            f"first (1 job {one:.2f}s, {len(names)} jobs {many:.2f}s, {built} built), target <= 0.15s ({verdict})"
        )


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=cwd, capture_output=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
