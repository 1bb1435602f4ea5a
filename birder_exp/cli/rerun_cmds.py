"""``rerun``: run a recorded run (or every job of a sweep) again into a new directory.

The config is rebuilt from the run's recorded group choices and overrides (see ``birder_exp.runs.rundir``), checked
against the config the run recorded, and the differences and version changes are printed before anything runs.
"""

import argparse
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from typing import Optional

from birder_exp.runs.rundir import RerunPlan
from birder_exp.runs.rundir import RunDirError
from birder_exp.runs.rundir import open_runs
from birder_exp.runs.rundir import plan_rerun

_SHOWN_DIFFERENCES = 20


def _value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _report(plan: RerunPlan, label: str) -> None:
    print(f"birder-exp rerun: {label}")
    if plan.note is not None:
        print(f"  note: {plan.note}")
    if len(plan.differences) == 0 and plan.note is None:
        print("  config: the rebuilt config equals the recorded one")
    unexpected = plan.unexpected
    for key, old, new in plan.differences[:_SHOWN_DIFFERENCES]:
        why = "changed since the run" if (key, old, new) in unexpected else "your override"
        print(f"  config: {key}: {_value(old)} -> {_value(new)} ({why})")
    if len(plan.differences) > _SHOWN_DIFFERENCES:
        print(f"  config: ... and {len(plan.differences) - _SHOWN_DIFFERENCES} more differences")
    for line in plan.versions:
        print(f"  warning: {line}")
    for name, value in plan.env.items():
        print(f"  env: {name}={value} (as recorded)")


def _sweep_dir(first: RerunPlan) -> Path:
    """A new sweep directory beside the usual ones: <paths.log_dir>/multirun/<date>/<time>_<suffix>_rerun."""

    import secrets

    config = (first.run.record or {}).get("config") or {}
    log_dir = (config.get("paths") or {}).get("log_dir")
    base = Path(log_dir) if log_dir else Path(first.cwd) / "outputs"
    stamp = datetime.now()
    return base / "multirun" / stamp.strftime("%Y-%m-%d") / f"{stamp.strftime('%H-%M-%S')}_{secrets.token_hex(3)}_rerun"


def cmd_rerun(args: argparse.Namespace) -> int:
    try:
        (sweep, runs) = open_runs(args.run_dir, args.job)
    except RunDirError as exc:
        raise ValueError(str(exc)) from None

    new_sweep: Optional[Path] = None
    plans = []
    for run in runs:
        target = None
        if sweep is not None and len(runs) > 1:
            if new_sweep is None:
                new_sweep = _sweep_dir(plan_rerun(run, args.overrides, sys.executable))
            target = str(new_sweep / run.path.name)
        plan = plan_rerun(run, args.overrides, sys.executable, run_dir=target)
        label = f"{run.path}" + (f" (job {run.path.name})" if sweep is not None else "")
        _report(plan, label)
        plans.append(plan)

    unexpected = sum(len(plan.unexpected) for plan in plans)
    if args.strict is True and unexpected > 0:
        print(
            f"birder-exp rerun: {unexpected} config values differ from the recorded run and --strict is set "
            "(pass them as overrides to accept them)",
            file=sys.stderr,
        )
        return 2

    if args.print_only is True:
        for plan in plans:
            env = "".join(f"{k}={v} " for k, v in plan.env.items())
            print(f"cd {subprocess.list2cmdline([plan.cwd])} && {env}{subprocess.list2cmdline(plan.command)}")
        return 0

    failed = 0
    for plan in plans:
        print(f"birder-exp rerun: {subprocess.list2cmdline(plan.command[1:])}", flush=True)
        done = subprocess.run(plan.command, cwd=plan.cwd, env={**os.environ, **plan.env}, check=False)
        failed += int(done.returncode != 0)

    if new_sweep is not None and new_sweep.is_dir():
        from birder_exp.runs.summary import summarize_sweep

        summarize_sweep(new_sweep)

    return 1 if failed > 0 else 0


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rerun",
        help="run a recorded run or sweep again (config rebuilt from its choices and overrides)",
        description=(
            "Rebuild a run's config from its recorded group choices and overrides, report how it differs from the "
            "recorded config and which package versions changed, then run it into a new directory. "
            "ckpt_path=last resumes from the run's newest last*.ckpt."
        ),
    )
    parser.add_argument("run_dir", help="a run directory (with .hydra/) or a sweep directory (numbered jobs)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_epochs=20 ckpt_path=last")
    parser.add_argument("--job", type=int, default=None, help="only this job of a sweep directory")
    parser.add_argument("--print", dest="print_only", action="store_true", help="report and print the commands only")
    parser.add_argument("--strict", action="store_true", help="refuse to run when the config changed since the run")
    parser.set_defaults(handler=cmd_rerun)
