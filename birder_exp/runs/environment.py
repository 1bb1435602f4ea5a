"""What a run needs to be reproduced months later, read without importing torch.

Versions come from package metadata (the installed distributions, not ``torch.__version__``), git revisions from the
``git`` executable when there is one. Both are read once per process (every job of a sweep runs the code its process
imported), which keeps a sweep job's records from costing a dozen git calls. Ranks come from the variables launchers
set, so a record is written once per run even when Lightning, torchrun or SLURM start several processes.
"""

import functools
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any
from typing import Optional

import birder_exp
from birder_exp.version import __version__

# The distributions whose versions decide what a rerun computes
TRACKED_PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics")

# Variables a launcher sets for one process group; none of them may outlive the job that set them
DISTRIBUTED_VARIABLES = (
    "LOCAL_RANK",
    "RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
    "CUBLAS_WORKSPACE_CONFIG",
)
_GIT_TIMEOUT = 5.0


@functools.cache
def _package_versions() -> tuple[tuple[str, Optional[str]], ...]:
    versions: dict[str, Optional[str]] = {"python": platform.python_version(), "birder_exp": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None

    return tuple(versions.items())


def package_versions() -> dict[str, Optional[str]]:
    return dict(_package_versions())


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None

    return done.stdout.strip()


def git_revision(path: Path) -> Optional[dict[str, Any]]:
    """The commit of the checkout holding ``path`` and whether tracked files differ from it (None: no checkout),
    as this process first saw them."""

    found = _git_revision(str(Path(path).resolve()))
    return dict(found) if found is not None else None


@functools.cache
def _git_revision(path: str) -> Optional[dict[str, Any]]:
    root = Path(path)
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or top == "":
        return None
    revision = _git(root, "rev-parse", "HEAD")
    if revision is None:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")

    return {"root": top, "revision": revision, "dirty": bool(status) if status is not None else None}


def birder_exp_git() -> Optional[dict[str, Any]]:
    """birder_exp's own revision: only an editable install from a checkout has one."""

    return git_revision(Path(birder_exp.__file__).resolve().parent)


def entry_command() -> list[str]:
    """How this process was started, as arguments after the interpreter (``-m module`` or a script path)."""

    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["-m", name]
    script = sys.argv[0] if len(sys.argv) > 0 else ""
    if script in ("", "-c"):
        return ["-m", "birder_exp.train"]  # Started from an interpreter prompt or `-c`: the module entry point

    return [str(Path(script).resolve())]


def command_line() -> dict[str, Any]:
    return {
        "argv": list(sys.argv),
        "executable": sys.executable,
        "entry": entry_command(),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def _env_int(name: str) -> Optional[int]:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def is_primary_process() -> bool:
    """True in the process that owns a run's records: global rank 0, or a process outside any launcher.

    Every rank variable a launcher may set (torchrun: RANK, GROUP_RANK, LOCAL_RANK; Lightning and cluster scripts:
    NODE_RANK, LOCAL_RANK; srun: SLURM_PROCID) must be 0 where present: a Lightning child started inside a SLURM
    allocation inherits SLURM_PROCID=0 but carries its own LOCAL_RANK.
    """

    return all(
        _env_int(name) in (None, 0) for name in ("RANK", "GROUP_RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID")
    )


def distributed_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in DISTRIBUTED_VARIABLES if name in os.environ}
