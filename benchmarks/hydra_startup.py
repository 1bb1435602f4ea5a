"""Claims: `python -m birder_exp.train --cfg job model=vit_l14_pn` takes <= 1 s in a fresh process and never
imports torch; a `-m` sweep over 50 model options with dry_run=true (compose, build on the meta device, no data)
costs <= 0.15 s per job after the first. Anchors, measured in the same run: a bare Hydra app (empty config, a print
task) for both claims, and the same sweep under Hydra's basic sweeper."""

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import REPO
from _common import report

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
        app = cwd / "bare_app.py"
        app.write_text(BARE_APP, encoding="utf-8")
        bare_cfg = statistics.median(_bare(app, ["--cfg", "job"], cwd)[0] for _ in range(7))
        report("  anchor: a bare Hydra app's --cfg job (empty config)", cfg_job, "bare Hydra", bare_cfg)

        names = registry.list_models(task=Task.IMAGE_CLASSIFICATION)[:SWEEP_SIZE]
        sweep = ["-m", f"model={','.join(names)}", "dry_run=true"]
        single = ["-m", f"model={names[0]}", "dry_run=true"]
        (ours, built) = _per_job(lambda args: _train(args, cwd), sweep, single)
        verdict = "met" if ours <= 0.15 and built == len(names) else "MISSED"
        print(
            f"hydra sweep (-m, {len(names)} model options, dry_run=true): birder_exp {ours:.4f}s per job after the "
            f"first ({built} built), target <= 0.15s ({verdict})"
        )
        basic = ["hydra/sweeper=basic"]
        (hydra_basic, _) = _per_job(lambda args: _train([*args, *basic], cwd), sweep, single)
        report("  same sweep under Hydra's basic sweeper (each job composed twice)", ours, "basic sweeper", hydra_basic)
        values = ",".join(str(i) for i in range(len(names)))
        (bare, _) = _per_job(lambda args: _bare(app, args, cwd), ["-m", f"+x={values}"], ["-m", "+x=0"])
        claim = f"  anchor: a bare Hydra app (empty config, a print task), {len(names)} jobs, basic sweeper"
        report(claim, ours, "bare Hydra", bare)


# The floor of any Hydra multirun: an app with an empty config whose task prints one value
BARE_APP = """import hydra


@hydra.main(config_path=None, config_name=None, version_base="1.3")
def main(cfg):
    print("built on the meta device", cfg.x)


if __name__ == "__main__":
    main()
"""


def _per_job(
    run: Callable[[list[str]], tuple[float, subprocess.CompletedProcess[str]]], many: list[str], one: list[str]
) -> tuple[float, int]:
    """Seconds per job after the first: (time of the whole sweep - median time of a one-job sweep) / (jobs - 1)."""

    single = statistics.median(run(one)[0] for _ in range(3))
    (total, proc) = run(many)
    built = proc.stdout.count("built on the meta device")
    return ((total - single) / max(1, built - 1), built)


def _bare(app: Path, args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(app), *args], check=True, cwd=cwd, capture_output=True, text=True)
    return (time.perf_counter() - start, proc)


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=cwd, capture_output=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
