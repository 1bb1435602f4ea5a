"""``python -m birder_exp.train``: train any registered architecture (Hydra composes, Lightning trains).

    python -m birder_exp.train model=<architecture> [pretrained=<entry>] [data=imagefolder data.root=...] [k=v ...]

``main()`` is also the entry for user scripts: register architectures or entries, then call it. Before Hydra
composes, plugins (``birder_exp.plugins`` entry points) are loaded and the ``model`` / ``pretrained`` groups are
generated from the registry. Torch is imported only when a job runs, so ``--cfg``, ``--help`` and completion
stay fast.
"""

import gc
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import NoReturn
from typing import Optional

import hydra
from omegaconf import DictConfig

from birder_exp.configs import ConfigError
from birder_exp.configs import load_plugins
from birder_exp.configs import register_configs
from birder_exp.configs.overrides import check_overrides
from birder_exp.configs.store import new_run_id
from birder_exp.model_registry import RegistryError
from birder_exp.runs.sweeper import register_sweeper_plugin

CONFIG_PATH = "pkg://birder_exp.conf"
CONFIG_NAME = "train"
PREFIX = "birder_exp.train"
_START = time.perf_counter()
_FROZEN = False


def _fail(exc: BaseException) -> NoReturn:
    message = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
    print(f"{PREFIX}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _freeze_imports() -> None:
    """Once per process, after torch and Lightning are imported: their objects live as long as the process, and
    leaving them to the cyclic collector makes every later collection walk them (a sweep's config composition
    then runs about 1.5x slower)."""

    global _FROZEN
    if not _FROZEN:
        gc.freeze()
        _FROZEN = True


def train_job(cfg: DictConfig) -> Optional[float]:
    """One training run: run the config, record and print its summary line, return the objective (for sweepers)."""

    from birder_exp.runs.launch import record_result
    from birder_exp.training.run import run

    _freeze_imports()

    try:
        result = run(cfg, start=_START)
    except (ConfigError, RegistryError) as exc:
        _fail(exc)

    record_result(result)
    print(result.summary, flush=True)
    return result.objective


def task(cfg: DictConfig) -> Optional[float]:
    """One Hydra job: ``train_job`` as birder_exp.runs.launch runs it (a failing sweep job does not stop the sweep;
    a sweep job that needs several processes gets its own launch)."""

    from birder_exp.runs.launch import guarded_job

    return guarded_job(cfg, train_job)


def _normalise_completion_line() -> None:
    """Hydra's completion query strips `python script.py` or `app`; teach it `python -m birder_exp.train`."""

    line = os.environ.get("COMP_LINE")
    if line is not None:
        os.environ["COMP_LINE"] = re.sub(r"^\s*\S*python[0-9.]*\s+-m\s+birder_exp\.train\b", "birder-exp-train", line)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``)."""

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _normalise_completion_line()
    try:
        load_plugins()
        register_configs()
        register_sweeper_plugin()
        new_run_id()
        check_overrides(sys.argv[1:])
    except (ConfigError, RegistryError) as exc:
        _fail(exc)

    hydra.main(config_path=CONFIG_PATH, config_name=CONFIG_NAME, version_base="1.3")(task)()


if __name__ == "__main__":
    main()
