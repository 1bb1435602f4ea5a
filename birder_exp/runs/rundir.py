"""Reading a run (or sweep) directory back and rebuilding the command that reproduces it.

Hydra's own way back, ``-cp <run>/.hydra -cn config``, loads the saved config as one flat file: the typed schema,
the config groups and the registry-generated options are gone, so ``model=...`` or a typed check no longer apply.
Here the run is recomposed from the primary config instead: every group pinned to the option it had (so a changed
default cannot slip in), then the run's own overrides, then the caller's. The recomposed, resolved config is then
compared with the one the run recorded, and package versions with the recorded ones.
"""

import os
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Optional

from omegaconf import DictConfig
from omegaconf import OmegaConf

from birder_exp.runs import environment
from birder_exp.runs.hydra_callback import task_container
from birder_exp.runs.record import read_record
from birder_exp.runs.summary import job_dirs

CHECKPOINT_SUFFIX = ".ckpt"
# The groups a `pretrained=` or `experiment=` choice may itself select: not pinned when the caller changes those
_DERIVED_GROUPS = {"model": ("pretrained", "experiment")}
_SWEEP_ONLY = (
    "hydra.sweep",
    "hydra.run",
    "hydra.launcher",
    "hydra.sweeper",
    "hydra.mode",
    "hydra.job.num",
    "hydra.job.id",
)
_SWEEP_ONLY_GROUPS = ("hydra/launcher", "hydra/sweeper")


class RunDirError(ValueError):
    """A path that is not a run or sweep directory, or a run that cannot be rebuilt; the message says which."""


def override_key(item: str) -> str:
    """The config key or group an override sets (``+a.b=1``, ``~a.b``, ``a/b@pkg=x`` -> ``a.b``, ``a/b@pkg``)."""

    key = item.split("=", 1)[0].strip()
    return key.lstrip("+~")


def quote_override(value: str) -> str:
    """``value`` as a quoted Hydra override value (paths may hold characters the override grammar reserves)."""

    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def merge_overrides(*layers: Sequence[str]) -> list[str]:
    """Later layers win per key; the order of first appearance is kept."""

    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key = override_key(item)
            merged.pop(key, None)
            merged[key] = item

    return list(merged.values())


def job_hydra_overrides(items: Sequence[str]) -> list[str]:
    """The Hydra overrides that shaped a job (search path, env, logging), without those naming its directory or
    its sweep's launcher."""

    kept = []
    for item in items:
        key = override_key(item)
        if key.startswith(_SWEEP_ONLY) or key in _SWEEP_ONLY_GROUPS:
            continue
        kept.append(item)

    return kept


@dataclass
class RunDir:
    path: Path
    hydra: DictConfig
    saved_config: DictConfig
    record: Optional[dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> "RunDir":
        path = Path(path).absolute()
        hydra_dir = path / ".hydra"
        if not (hydra_dir / "hydra.yaml").is_file():
            raise RunDirError(f"{path} is not a run directory (it has no .hydra/hydra.yaml)")

        hydra_yaml = OmegaConf.load(hydra_dir / "hydra.yaml")
        saved = OmegaConf.load(hydra_dir / "config.yaml")
        return cls(path=path, hydra=hydra_yaml.hydra, saved_config=saved, record=read_record(path))  # type: ignore[arg-type]

    @property
    def overrides(self) -> list[str]:
        return [str(item) for item in self.hydra.overrides.task]

    @property
    def hydra_overrides(self) -> list[str]:
        return job_hydra_overrides([str(item) for item in self.hydra.overrides.hydra])

    @property
    def choices(self) -> dict[str, Optional[str]]:
        return {str(k): (str(v) if v is not None else None) for k, v in self.hydra.runtime.choices.items()}

    @property
    def config_name(self) -> str:
        return str(self.hydra.job.config_name or "train")

    @property
    def job_num(self) -> Optional[int]:
        num = OmegaConf.select(self.hydra, "job.num")
        return int(num) if num is not None and str(self.hydra.mode).endswith("MULTIRUN") else None

    @property
    def entry(self) -> list[str]:
        command = (self.record or {}).get("command") or {}
        entry = command.get("entry")
        return [str(v) for v in entry] if entry else ["-m", "birder_exp.train"]

    @property
    def recorded_output_dir(self) -> str:
        """Where the run wrote (its recorded paths name it even if the directory was moved since)."""

        hydra = (self.record or {}).get("hydra") or {}
        return str(hydra.get("output_dir") or self.hydra.runtime.output_dir)

    @property
    def cwd(self) -> str:
        command = (self.record or {}).get("command") or {}
        return str(command.get("cwd") or self.hydra.runtime.cwd)

    def pinned_choices(self, extra: Sequence[str]) -> list[str]:
        touched = {override_key(item) for item in extra}
        pins = []
        for group, choice in self.choices.items():
            if group == "hydra" or group.startswith("hydra/"):
                continue
            if choice is None or any(parent in touched for parent in _DERIVED_GROUPS.get(group, ())):
                continue  # Hydra takes no `group=null` override; a default that became non-null shows in the diff
            pins.append(f"{group}={choice}")

        return pins

    def last_checkpoint(self) -> Path:
        """The newest ``last*.ckpt`` under the run (Lightning's ``save_last`` files, step or epoch ones)."""

        found = [p for p in self.path.rglob(f"last*{CHECKPOINT_SUFFIX}") if p.is_file()]
        if len(found) == 0:
            raise RunDirError(
                f"{self.path} has no last*.ckpt to resume from (keep one with callbacks=default, "
                "or callbacks=resumable for checkpoints every N steps)"
            )
        return max(found, key=lambda p: p.stat().st_mtime_ns)


def open_runs(path: str | Path, job: Optional[int] = None) -> tuple[Optional[Path], list[RunDir]]:
    """(sweep directory or None, its runs): a run directory gives itself, a sweep directory its jobs."""

    path = Path(path).absolute()
    if not path.is_dir():
        raise RunDirError(f"{path} is not a directory")
    if (path / ".hydra").is_dir():
        if job is not None:
            raise RunDirError(f"--job applies to a sweep directory; {path} is a single run")
        return (None, [RunDir.load(path)])

    jobs = job_dirs(path)
    if len(jobs) == 0:
        raise RunDirError(f"{path} is neither a run directory (.hydra/) nor a sweep directory (numbered job folders)")
    if job is not None:
        chosen = [p for num, p in jobs if num == job]
        if len(chosen) == 0:
            raise RunDirError(f"{path} has no job {job} (jobs: {', '.join(str(num) for num, _ in jobs)})")
        return (path, [RunDir.load(chosen[0])])

    return (path, [RunDir.load(p) for _, p in jobs])


def resolve_resume(run: RunDir, extra: Sequence[str]) -> list[str]:
    """``ckpt_path=last`` names the run's newest last checkpoint (Lightning's "last" would look in the new run)."""

    out = []
    for item in extra:
        if override_key(item) == "ckpt_path" and item.split("=", 1)[1].strip().strip("'\"") == "last":
            item = f"{item.split('=', 1)[0]}={quote_override(str(run.last_checkpoint()))}"
        out.append(item)

    return out


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and len(data) > 0:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat

    return {prefix: data}


def diff_configs(recorded: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, rebuilt value) for every leaf that differs, in key order; "<absent>" marks a side
    without the key."""

    old = _flatten(recorded)
    new = _flatten(rebuilt)
    absent = "<absent>"
    return [
        (key, old.get(key, absent), new.get(key, absent))
        for key in sorted(set(old) | set(new))
        if old.get(key, absent) != new.get(key, absent)
    ]


def version_differences(run: RunDir) -> list[str]:
    recorded = (run.record or {}).get("versions") or {}
    now = environment.package_versions()
    lines = [
        f"{name} {recorded[name]} recorded, {now.get(name)} installed"
        for name in sorted(recorded)
        if recorded[name] != now.get(name)
    ]
    old_git = ((run.record or {}).get("birder_exp_git") or {}).get("revision")
    new_git = (environment.birder_exp_git() or {}).get("revision")
    if old_git is not None and new_git is not None and old_git != new_git:
        lines.append(f"birder_exp was at git {old_git[:12]}, is now at {new_git[:12]}")

    return lines


def compose_run(run: RunDir, overrides: Sequence[str], removable: Sequence[str] = ()) -> tuple[DictConfig, list[str]]:
    """Compose ``overrides`` (plus the run's Hydra overrides) the way ``python -m birder_exp.train`` would.

    Returns the config (with its ``hydra`` node) and the overrides it used: a pin in ``removable`` that Hydra refuses
    (a group that a config's own defaults list added, not the primary one) is dropped.
    """

    from hydra import compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from birder_exp.configs import load_plugins
    from birder_exp.configs import register_configs

    load_plugins()
    register_configs()
    items = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="birder_exp.conf", version_base="1.3"):
            while True:
                try:
                    cfg = compose(
                        config_name=run.config_name, overrides=[*items, *run.hydra_overrides], return_hydra_config=True
                    )
                    return (cfg, items)
                except ConfigCompositionException as exc:
                    message = str(exc)
                    refused = [i for i in items if i in removable and f"'{override_key(i)}'" in message]
                    if "No match in the defaults list" not in message or len(refused) == 0:
                        raise
                    items = [i for i in items if i not in refused]
    finally:
        GlobalHydra.instance().clear()


def resolved_task_config(cfg: DictConfig, output_dir: str, cwd: str) -> dict[str, Any]:
    """The task part of a composed config, resolved with ``output_dir`` and ``cwd`` as Hydra's runtime values."""

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    from omegaconf import read_write

    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = output_dir
        cfg.hydra.runtime.cwd = cwd
    from birder_exp.configs.store import new_run_id

    saved = HydraConfig.instance().cfg
    here = os.getcwd()
    try:
        HydraConfig.instance().set_config(cfg)
        os.chdir(cwd)
        new_run_id()  # ${birder_exp.cwd:} (paths.root_dir) is the directory an invocation starts in: the run's
        return task_container(cfg, resolve=True)
    finally:
        os.chdir(here)
        new_run_id()
        HydraConfig.instance().cfg = saved


@dataclass
class RerunPlan:
    run: RunDir
    overrides: list[str]
    command: list[str]
    cwd: str
    differences: list[tuple[str, Any, Any]]
    by_caller: set[str]
    versions: list[str]
    note: Optional[str] = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def unexpected(self) -> list[tuple[str, Any, Any]]:
        """Differences the caller's overrides do not explain: the code or its defaults changed since the run."""

        return [d for d in self.differences if not any(d[0] == k or d[0].startswith(f"{k}.") for k in self.by_caller)]


def plan_rerun(run: RunDir, extra: Sequence[str], executable: str, run_dir: Optional[str] = None) -> RerunPlan:
    """The command that reruns ``run`` with the caller's ``extra`` overrides, and how its config compares."""

    extra = resolve_resume(run, extra)
    pins = run.pinned_choices(extra)
    overrides = merge_overrides(pins, run.overrides, extra)
    cwd = run.cwd if Path(run.cwd).is_dir() else os.getcwd()
    by_caller = {override_key(item).split("@", 1)[0].replace("/", ".") for item in extra}
    plan = RerunPlan(run, overrides, [], cwd, [], by_caller, version_differences(run))
    recorded = (run.record or {}).get("config")
    try:
        (composed, plan.overrides) = compose_run(run, overrides, removable=pins)
        if recorded is not None:
            rebuilt = resolved_task_config(composed, run.recorded_output_dir, cwd)
            plan.differences = diff_configs(recorded, rebuilt)
        else:
            rebuilt = task_container(composed, resolve=False)
            saved = OmegaConf.to_container(run.saved_config, resolve=False)
            plan.differences = diff_configs(saved, rebuilt)  # type: ignore[arg-type]
            plan.note = "no run.json: compared with .hydra/config.yaml, unresolved"
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        plan.note = f"the config could not be recomposed here to check it ({first})"

    threads = (run.record or {}).get("torch_threads")
    if threads is not None:
        plan.env["OMP_NUM_THREADS"] = str(threads)  # CPU results depend on how reductions are split over threads

    hydra_items = list(run.hydra_overrides)
    if run_dir is not None:
        hydra_items.append(f"hydra.run.dir={quote_override(run_dir)}")
    plan.command = [executable, *run.entry, *plan.overrides, *hydra_items]
    return plan
