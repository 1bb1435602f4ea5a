"""The sweeper behind ``-m`` (``hydra/sweeper=birder_exp``, chosen in ``conf/train.yaml``): Hydra's basic sweeper,
composing each job once.

Hydra's basic sweeper composes every job of a batch before the first one starts (so a bad override fails the
sweep early), and its launcher then composes each job a second time to run it; at about 0.15 s a compose, that is
most of a short job's cost. This sweeper validates the same way, keeps each composed config (pickled, about
25 KB) and hands it to the launcher when the launcher runs jobs in this process, as the basic launcher does.
Launchers that run jobs elsewhere (SLURM, joblib) compose their jobs themselves, as they always do.

A large batch is validated by worker processes forked from this one while it runs no other thread (the workers only
compose configs); a job whose config fails to compose there is composed again here, so its error is the one Hydra
would raise.
"""

import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext
from hydra.types import TaskFunction
from omegaconf import DictConfig
from omegaconf import OmegaConf

logger = logging.getLogger(__name__)
SWEEPER_CLASS = "hydra_plugins.birder_exp_sweeper.birder_exp_sweeper.BirderSweeper"
IN_PROCESS_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",)
# Below this many jobs a worker's fork costs more than it saves
PARALLEL_MIN_JOBS = 8


def _overrides_key(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(item) for item in overrides)


class ComposedJobs:
    """The validated configs of a batch, by job overrides, each handed out once."""

    def __init__(self) -> None:
        self._blobs: dict[tuple[str, ...], bytes] = {}
        self.master_id: Optional[int] = None

    def put(self, overrides: Sequence[str], blob: bytes) -> None:
        self._blobs[_overrides_key(overrides)] = blob

    def take(self, master_config: DictConfig, overrides: Sequence[str]) -> Optional[DictConfig]:
        if id(master_config) != self.master_id:
            return None
        blob = self._blobs.pop(_overrides_key(overrides), None)
        return pickle.loads(blob) if blob is not None else None

    def clear(self) -> None:
        self._blobs.clear()

    def __len__(self) -> int:
        return len(self._blobs)


class ReusingConfigLoader(ConfigLoader):
    """The sweep's config loader for its launcher: a job validated by the sweeper is not composed again."""

    def __init__(self, delegate: ConfigLoader, composed: ComposedJobs) -> None:
        self.delegate = delegate
        self.composed = composed

    def load_configuration(
        self,
        config_name: Optional[str],
        overrides: list[str],
        run_mode: Any,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        return self.delegate.load_configuration(
            config_name=config_name,
            overrides=overrides,
            run_mode=run_mode,
            from_shell=from_shell,
            validate_sweep_overrides=validate_sweep_overrides,
        )

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = self.composed.take(master_config, sweep_overrides)
        if config is not None:
            return config
        return self.delegate.load_sweep_config(master_config=master_config, sweep_overrides=sweep_overrides)

    def get_search_path(self) -> Any:
        return self.delegate.get_search_path()

    def get_sources(self) -> Any:
        return self.delegate.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.delegate.list_groups(parent_name)

    def get_group_options(self, group_name: str, results_filter: Any = None, config_name: Any = None,
                          overrides: Any = None) -> list[str]:  # fmt: skip
        kwargs: dict[str, Any] = {"config_name": config_name, "overrides": overrides}
        if results_filter is not None:
            kwargs["results_filter"] = results_filter
        return self.delegate.get_group_options(group_name, **kwargs)

    def compute_defaults_list(self, config_name: Optional[str], overrides: list[str], run_mode: Any) -> Any:
        return self.delegate.compute_defaults_list(config_name, overrides, run_mode)


# What a forked compose worker inherits from the sweeper that forked it
_worker_state: dict[str, Any] = {}


def _compose_in_worker(overrides: list[str]) -> Optional[bytes]:
    try:
        loader = _worker_state["loader"]
        config = loader.load_sweep_config(master_config=_worker_state["master"], sweep_overrides=overrides)
        return pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None  # Composed again by the sweeper, which raises Hydra's own error


def compose_workers(requested: Optional[int], jobs: int) -> int:
    """How many processes compose a batch of ``jobs``: a fork is only safe while this process runs one thread, and
    only Linux forks without caveats (macOS system libraries do not survive one)."""

    if requested is not None:
        wanted = max(1, int(requested))
    elif jobs < PARALLEL_MIN_JOBS:
        wanted = 1
    else:
        wanted = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if wanted > 1 and (threading.active_count() > 1 or not sys.platform.startswith("linux")):
        return 1
    return min(wanted, jobs)


class ComposeOnceSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: Optional[int] = None,
        params: Optional[dict[str, str]] = None,
        compose_workers: Optional[int] = None,
    ) -> None:
        # Not BasicSweeper.__init__: its super(BasicSweeper, self) fails once Hydra's first plugin scan has executed
        # basic_sweeper again (a new BasicSweeper class), which happens after this module may have been imported
        Sweeper.__init__(self)
        self.overrides: Optional[Sequence[Sequence[Sequence[str]]]] = None
        self.batch_index = 0
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.compose_workers = compose_workers
        self.composed = ComposedJobs()
        self.reuse = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.composed.master_id = id(config)
        self.reuse = str(OmegaConf.select(config, "hydra.launcher._target_")) in IN_PROCESS_LAUNCHERS
        launch_context = hydra_context
        if self.reuse:
            loader = ReusingConfigLoader(hydra_context.config_loader, self.composed)
            launch_context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=launch_context, task_function=task_function, config=config
        )

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of the batch (errors stop the sweep before its first job), keeping the configs."""

        assert self.hydra_context is not None and self.config is not None
        self.composed.clear()
        jobs = [list(overrides) for overrides in batch]
        workers = compose_workers(self.compose_workers, len(jobs))
        start = time.perf_counter()
        blobs: list[Optional[bytes]] = [None] * len(jobs)
        if workers > 1:
            _worker_state.update(loader=self.hydra_context.config_loader, master=self.config)
            try:
                context = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    blobs = list(pool.map(_compose_in_worker, jobs, chunksize=max(1, len(jobs) // (workers * 4))))
            except (BrokenProcessPool, OSError) as exc:
                logger.warning(f"Composing in {workers} worker processes failed ({exc}): composing here")
                blobs = [None] * len(jobs)
            finally:
                _worker_state.clear()

        for idx, overrides in enumerate(jobs):
            blob = blobs[idx]
            if blob is None:
                config = self.hydra_context.config_loader.load_sweep_config(
                    master_config=self.config, sweep_overrides=overrides
                )
                blob = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL) if self.reuse else None
            if self.reuse and blob is not None:
                self.composed.put(overrides, blob)

        logger.debug(f"Composed {len(jobs)} jobs in {time.perf_counter() - start:.2f}s with {workers} process(es)")


def register_sweeper_plugin() -> None:
    """Make ``hydra/sweeper=birder_exp`` launchable.

    Hydra finds plugins by walking the ``hydra_plugins`` namespace package, which an editable install hides behind
    an import hook: the class is registered by hand when the scan did not find it.
    """

    plugins = Plugins.instance()  # The first call scans (and imports the plugin module when it can see it)
    if SWEEPER_CLASS not in plugins.class_name_to_class:
        from hydra_plugins.birder_exp_sweeper.birder_exp_sweeper import BirderSweeper

        plugins.register(BirderSweeper)
