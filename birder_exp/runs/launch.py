"""How a Hydra job runs: in this process, or (sweep jobs that need several processes) through a launch of its own.

Lightning's DDP launcher starts the other ranks by running ``sys.argv`` again. In a ``-m`` sweep that command is
the whole sweep, so every rank would start a second copy of it. Under Hydra's basic launcher a sweep job that needs
a process group (a DDP / FSDP / DeepSpeed strategy, several devices or nodes) therefore runs as a single run in a
child process, ``python -m birder_exp.train <the job's overrides> hydra.run.dir=<the job's directory>``, whose own
DDP launch is the ordinary one; the job waits for it and reads its result from the run record. On SLURM
(``hydra/launcher=submitit_slurm``) the cluster starts one task per process and Lightning starts none, so jobs run
as they are; other launchers cannot start a process group per job and are refused with one line.

In a sweep a failing job is recorded and reported in one line, and the sweep goes on; a single run still fails.
"""

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Optional

from omegaconf import DictConfig

from birder_exp.configs.errors import ConfigError
from birder_exp.runs import record
from birder_exp.runs.environment import entry_command
from birder_exp.runs.hydra_callback import DELEGATED_VARIABLE
from birder_exp.runs.hydra_callback import mark_job_failed
from birder_exp.runs.rundir import job_hydra_overrides
from birder_exp.runs.rundir import quote_override

logger = logging.getLogger(__name__)
PREFIX = "birder_exp.train"
PROCESS_GROUP_STRATEGIES = ("ddp", "fsdp", "deepspeed")
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# Launchers whose jobs the cluster starts once per process (Lightning then starts no process of its own)
CLUSTER_LAUNCHERS = ("SlurmLauncher",)


class JobLaunchError(RuntimeError):
    """A sweep job's own launch (its child process) failed."""


def _strategy_name(strategy: Any) -> str:
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", "")).rsplit(".", 1)[-1].lower()
    return str(strategy if strategy is not None else "auto").lower()


def _device_count(accelerator: str, devices: Any) -> int:
    if isinstance(devices, (list, tuple)) or type(devices).__name__ == "ListConfig":
        return len(devices)
    if isinstance(devices, int):
        if devices >= 0:
            return devices
        devices = "auto"
    text = str(devices).strip().lower()
    if text.isdigit():
        return int(text)
    if "," in text:
        return len([part for part in text.split(",") if part.strip() != ""])
    if text not in ("auto", "-1"):
        raise ConfigError(f"trainer.devices={devices!r} is not a count, a list of ids, 'auto' or -1")
    if accelerator == "cpu":
        return 1 if text == "auto" else os.cpu_count() or 1

    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def needs_process_group(trainer: Mapping[str, Any]) -> bool:
    """Whether Lightning would set up a process group (and, outside a cluster, start processes) for ``trainer``."""

    nodes = int(trainer.get("num_nodes") or 1)
    strategy = _strategy_name(trainer.get("strategy"))
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    devices = _device_count(accelerator, trainer.get("devices", "auto"))
    return nodes > 1 or devices > 1 or strategy.startswith(PROCESS_GROUP_STRATEGIES)


def job_command(hydra_cfg: Any, output_dir: str) -> list[str]:
    """The single-run command that reproduces this sweep job in ``output_dir``."""

    return [
        sys.executable,
        *entry_command(),
        *[str(item) for item in hydra_cfg.overrides.task],
        *job_hydra_overrides([str(item) for item in hydra_cfg.overrides.hydra]),
        f"hydra.run.dir={quote_override(output_dir)}",
        "hydra.output_subdir=null",  # The sweep job already saved .hydra/ here
    ]


def _launch_job(hydra_cfg: Any) -> Optional[float]:
    output_dir = str(hydra_cfg.runtime.output_dir)
    command = job_command(hydra_cfg, output_dir)
    num = hydra_cfg.job.get("num")
    logger.info(f"Job {num} needs a process group: launching it as {' '.join(command[1:])}")
    env = dict(os.environ)
    env[DELEGATED_VARIABLE] = str(num)
    done = subprocess.run(command, env=env, cwd=hydra_cfg.runtime.cwd, check=False)
    if done.returncode != 0:
        raise JobLaunchError(
            f"job {num}: its own launch exited with code {done.returncode} (log: {output_dir}/{hydra_cfg.job.name}.log)"
        )

    result = (record.read_record(output_dir) or {}).get("result") or {}
    objective = result.get("objective")
    return float(objective) if objective is not None else None


def _refuse(launcher: str) -> None:
    name = launcher.rsplit(".", 1)[-1]
    print(
        f"{PREFIX}: a sweep with a multi-process trainer (DDP/FSDP, several devices or nodes) cannot run under "
        f"{name}: use the default launcher (birder_exp launches each job's processes itself) or "
        "hydra/launcher=submitit_slurm (one SLURM task per process)",
        file=sys.stderr,
    )
    raise SystemExit(2)


def check_sweep_launcher(config: DictConfig) -> None:
    """Refuse a sweep before its first job when its trainer (as composed without the swept values) needs a process
    group that the chosen launcher cannot start per job; swept trainers are checked per job."""

    from omegaconf import OmegaConf

    launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    if launcher == BASIC_LAUNCHER or launcher.endswith(CLUSTER_LAUNCHERS):
        return
    trainer: dict[str, Any] = {}
    for key in ("num_nodes", "strategy", "accelerator", "devices"):
        try:
            value = OmegaConf.select(config, f"trainer.{key}")
            trainer[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:
            return  # Left to the jobs, which report what does not resolve
    if needs_process_group({k: v for k, v in trainer.items() if v is not None}):
        _refuse(launcher)


def guarded_job(cfg: DictConfig, train: Callable[[DictConfig], Optional[float]]) -> Optional[float]:
    """Run ``train(cfg)`` as this Hydra job should run (see the module docstring)."""

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return train(cfg)
    hydra_cfg: Any = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            return train(cfg)
        except BaseException as exc:
            mark_job_failed(exc)
            raise

    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    try:
        if needs_process_group(cfg.trainer) and os.environ.get(DELEGATED_VARIABLE) is None:
            if launcher == BASIC_LAUNCHER:
                return _launch_job(hydra_cfg)
            if not launcher.endswith(CLUSTER_LAUNCHERS):
                _refuse(launcher)
        return train(cfg)
    except SystemExit as exc:
        if exc.code in (0, None) or exc.__context__ is None:
            raise  # A refusal or an exit with nothing to record stops the sweep, as it would stop a run
        text = mark_job_failed(exc)
        logger.error(f"Job {hydra_cfg.job.get('num')} failed: {text}")
        return None
    except Exception as exc:
        text = mark_job_failed(exc)
        logger.exception(f"Job {hydra_cfg.job.get('num')} failed: {text}")
        print(f"{PREFIX}: job {hydra_cfg.job.get('num')} failed: {text}", file=sys.stderr, flush=True)
        return None


def record_result(result: Any) -> None:
    """Store a finished run's outcome (metrics, checkpoints, summary line) in its run record."""

    from hydra.core.hydra_config import HydraConfig

    from birder_exp.runs.environment import is_primary_process

    if not HydraConfig.initialized() or not is_primary_process():
        return
    record.update_record(
        str(HydraConfig.get().runtime.output_dir),
        result={
            "metrics": dict(result.metrics),
            "objective": result.objective,
            "summary": result.summary,
            "seconds": round(float(result.seconds), 3),
            "best_checkpoint": result.best_checkpoint,
            "last_checkpoint": result.last_checkpoint,
            "goal_met": result.goal_met,
        },
    )
