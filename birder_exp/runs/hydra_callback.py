"""The Hydra callback behind every run (configured in ``conf/hydra/default.yaml``).

- run and sweep directories get a fresh unique suffix per run, checked against what is already on disk;
- each job starts from the process state the first job had (``JobState``) and leaves none of its own behind;
- each job's ``run.json`` is written when it starts and completed when it ends;
- a sweep ends with its summary table (``summary.json``) and a non-zero exit status when a job failed.

Nothing here imports torch before a job does.
"""

import logging
import os
from pathlib import Path
from typing import Any
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf import OmegaConf

from birder_exp.runs import environment
from birder_exp.runs import record
from birder_exp.runs.isolation import JobState
from birder_exp.runs.isolation import torch_switches

logger = logging.getLogger(__name__)
DELEGATED_VARIABLE = "BIRDER_EXP_DELEGATED_JOB"
_SUFFIX_TRIES = 64


def _resolve_dir(config: DictConfig, key: str) -> Optional[str]:
    saved = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(config)
        value = OmegaConf.select(config, key)
        return str(value) if value is not None else None
    except Exception:
        return None  # A directory that cannot resolve yet is Hydra's to report
    finally:
        HydraConfig.instance().cfg = saved


def fresh_directory_suffix(config: DictConfig, key: str) -> None:
    """Draw a new suffix for ``${birder_exp.run_id:}`` until the directory at ``key`` is new.

    The suffix is per run, not per process: two runs started by one process in the same second (a user script
    calling ``main()`` twice, a rerun of several jobs) get different directories, and so do runs of separate
    processes, whose suffixes are random. A directory that does not depend on the suffix (``hydra.run.dir=...``
    given explicitly, as Lightning does for its DDP processes) is left as it is.
    """

    from birder_exp.configs.store import new_run_id

    for _ in range(_SUFFIX_TRIES):
        new_run_id()
        first = _resolve_dir(config, key)
        if first is None or not Path(first).exists():
            return
        new_run_id()
        second = _resolve_dir(config, key)
        if second == first or second is None or not Path(second).exists():
            return


def task_container(config: DictConfig, resolve: bool) -> dict[str, Any]:
    """The task part of a composed config as plain data, read in place: a masked copy of the whole config costs
    more than a short sweep job's own work. Interpolations resolve through the full config, as the job's do."""

    container: dict[str, Any] = {}
    for key in config:
        if key == "hydra":
            continue
        node = config._get_node(str(key))
        if OmegaConf.is_config(node):
            container[str(key)] = OmegaConf.to_container(node, resolve=resolve)  # type: ignore[arg-type]
        elif OmegaConf.is_missing(config, str(key)):
            container[str(key)] = "???"
        else:
            container[str(key)] = config[key] if resolve else node._value()  # type: ignore[union-attr]

    return container


def _task_config(config: DictConfig) -> Optional[dict[str, Any]]:
    """The job's config with every interpolation resolved (the values the run really used)."""

    try:
        return task_container(config, resolve=True)
    except Exception as exc:
        logger.warning(f"run.json: the resolved config was not recorded ({type(exc).__name__}: {exc})")
        return None


def pretrained_info(config: DictConfig) -> Optional[dict[str, Any]]:
    """The weights entry of ``pretrained=``: its sha256 (the file is verified against it before loading) and the
    local file when it is in the cache."""

    entry = OmegaConf.select(config, "pretrained.name")
    if entry is None:
        return None
    file_format = str(OmegaConf.select(config, "pretrained.file_format") or "pt")
    info: dict[str, Any] = {"entry": str(entry), "file_format": file_format, "sha256": None, "path": None}
    try:
        from birder_exp.weights import settings
        from birder_exp.weights.cache import trusted_file
        from birder_exp.weights.download import resolve_source
        from birder_exp.weights.download import target_path

        current = settings.current()
        source = resolve_source(str(entry), file_format, current)
        info["sha256"] = source.expected.sha256
        cached = trusted_file(target_path(str(entry), file_format, None, current), source.expected.sha256)
        info["path"] = str(cached) if cached is not None else None
    except Exception as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"

    return info


def _hydra_section(config: DictConfig) -> dict[str, Any]:
    hc = config.hydra
    mode = str(hc.mode).rsplit(".", 1)[-1] if hc.mode is not None else "RUN"
    section: dict[str, Any] = {
        "mode": mode,
        "config_name": hc.job.config_name,
        "job_name": hc.job.name,
        "output_dir": hc.runtime.output_dir,
        "overrides": [str(v) for v in hc.overrides.task],
        "hydra_overrides": [str(v) for v in hc.overrides.hydra],
        "choices": {str(k): (str(v) if v is not None else None) for k, v in hc.runtime.choices.items()},
    }
    if mode == "MULTIRUN":
        section["job_num"] = OmegaConf.select(hc, "job.num")
        section["sweep_dir"] = str(Path(hc.runtime.output_dir).parent)

    return section


def start_record(config: DictConfig) -> None:
    output_dir = str(config.hydra.runtime.output_dir)
    command = environment.command_line()
    start_state = {"environment": environment.distributed_environment(), "torch": torch_switches()}
    if os.environ.get(DELEGATED_VARIABLE) is not None and record.read_record(output_dir) is not None:
        # The process a sweep job started for its own DDP launch: the job's record stays, this one adds to it
        record.update_record(output_dir, launched=command, launched_state=start_state)
        return

    project = environment.git_revision(Path(command["cwd"]))
    own = environment.birder_exp_git()
    record.write_record(
        output_dir,
        {
            "status": record.STATUS_RUNNING,
            "started": record.now_iso(),
            "finished": None,
            "error": None,
            "command": command,
            "hydra": _hydra_section(config),
            "versions": environment.package_versions(),
            "birder_exp_git": own,
            "project_git": project if project is not None and (own is None or project["root"] != own["root"]) else None,
            "pretrained": pretrained_info(config),
            "start_state": start_state,
            "config": _task_config(config),
            "result": None,
            "final_weights_sha256": None,
        },
    )


def _error_text(exc: BaseException) -> str:
    context = exc.__context__
    if isinstance(exc, SystemExit) and context is not None:
        exc = context  # birder_exp.train turns a ConfigError into SystemExit(2): the error is the cause
    message = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class RunRecords(Callback):
    def __init__(self) -> None:
        self._states: list[JobState] = []

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        fresh_directory_suffix(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from birder_exp.runs.launch import check_sweep_launcher

        check_sweep_launcher(config)
        fresh_directory_suffix(config, "hydra.sweep.dir")
        # Sweepers resolve hydra.sweep.dir before any job sets HydraConfig, and paths.log_dir refers to
        # ${hydra:runtime.cwd}: make the sweep's config current (each job replaces it with its own, then restores it)
        HydraConfig.instance().set_config(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        state = JobState.capture(ignore=set(config.hydra.job.env_set.keys()))
        self._states.append(state)
        if environment.is_primary_process():
            start_record(config)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            if environment.is_primary_process():
                output_dir = str(config.hydra.runtime.output_dir)
                status = getattr(job_return.status, "name", str(job_return.status))
                if status == "FAILED":
                    record.mark_finished(output_dir, record.STATUS_FAILED, _error_text(job_return._return_value))
                else:
                    record.mark_finished(output_dir, record.STATUS_COMPLETED)
                if OmegaConf.select(config, "pretrained.name") is not None:
                    record.update_record(output_dir, pretrained=pretrained_info(config))
        finally:
            if len(self._states) > 0:
                self._states.pop().restore()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from birder_exp.runs.summary import summarize_sweep

        sweep_dir = _resolve_dir(config, "hydra.sweep.dir")
        if sweep_dir is None or not Path(sweep_dir).is_dir():
            return
        rows = summarize_sweep(sweep_dir)
        failed = [row.num for row in rows if row.status != record.STATUS_COMPLETED]
        if len(failed) > 0:
            raise SystemExit(1)


def mark_job_failed(exc: BaseException) -> str:
    """Record a failure the job caught itself (a sweep goes on); returns the one-line message."""

    text = _error_text(exc)
    if HydraConfig.initialized() and environment.is_primary_process():
        record.mark_finished(str(HydraConfig.get().runtime.output_dir), record.STATUS_FAILED, text)

    return text
