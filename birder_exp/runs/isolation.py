"""Process-wide state that one Hydra job must not hand to the next one run in the same process.

Hydra's basic launcher runs a sweep's jobs one after another in one interpreter. A job changes the environment
(Lightning's ``seed_everything`` sets PL_GLOBAL_SEED, its DDP launcher LOCAL_RANK, MASTER_PORT, WORLD_SIZE, ...;
``deterministic=True`` sets CUBLAS_WORKSPACE_CONFIG), torch's global switches (deterministic algorithms, cuDNN,
matmul precision, threads, default dtype), the random generators and warning filters. ``JobState.capture()``
before a job and ``restore()`` after it put all of that back, and reseed the generators from the OS so a job
without a seed never continues the previous job's seeded sequence.
"""

import os
import random
import sys
import warnings
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Optional


def torch_switches() -> dict[str, Any]:
    """The torch global switches a training job may flip (empty when torch was never imported)."""

    torch = sys.modules.get("torch")
    if torch is None:
        return {}

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "num_threads": torch.get_num_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "grad_enabled": torch.is_grad_enabled(),
        "anomaly_detection": torch.is_anomaly_enabled(),
        "distributed_initialized": bool(torch.distributed.is_available() and torch.distributed.is_initialized()),
    }


def _set_torch_switches(saved: dict[str, Any]) -> None:
    import torch

    if len(saved) == 0:
        # torch arrived during the job: its defaults are the state before it
        saved = {
            "deterministic_algorithms": False,
            "deterministic_warn_only": False,
            "cudnn_benchmark": False,
            "cudnn_deterministic": False,
            "float32_matmul_precision": "highest",
            "default_dtype": "torch.float32",
            "grad_enabled": True,
            "anomaly_detection": False,
        }
    torch.use_deterministic_algorithms(saved["deterministic_algorithms"], warn_only=saved["deterministic_warn_only"])
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    torch.set_float32_matmul_precision(saved["float32_matmul_precision"])
    if "num_threads" in saved and torch.get_num_threads() != saved["num_threads"]:
        torch.set_num_threads(saved["num_threads"])
    torch.set_default_dtype(getattr(torch, saved["default_dtype"].split(".")[-1]))
    torch.set_grad_enabled(saved["grad_enabled"])
    torch.autograd.set_detect_anomaly(saved["anomaly_detection"])


def _close_process_group() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _reseed_from_os() -> None:
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()  # Also reseeds every CUDA device when CUDA is initialised


def _lightning_rank_reset() -> None:
    """Lightning keeps the process's rank in module globals (rank_zero_only.rank); a job may have changed it."""

    for name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        module = sys.modules.get(name)
        rank_zero_only = getattr(module, "rank_zero_only", None) if module is not None else None
        if rank_zero_only is not None and hasattr(rank_zero_only, "rank"):
            rank_zero_only.rank = 0


@dataclass
class JobState:
    environ: dict[str, str]
    torch: dict[str, Any]
    warning_filters: list[Any]
    ignored: set[str] = field(default_factory=set)
    restored: bool = False

    @classmethod
    def capture(cls, ignore: Optional[set[str]] = None) -> "JobState":
        """The state now; variables in ``ignore`` (Hydra's ``hydra.job.env_set``, which Hydra restores) are left out."""

        ignored = set(ignore or ())
        environ = {k: v for k, v in os.environ.items() if k not in ignored}
        return cls(environ=environ, torch=torch_switches(), warning_filters=list(warnings.filters), ignored=ignored)

    def leaked_variables(self) -> dict[str, Optional[str]]:
        """Variables the job added or changed (None: removed), for the job's log."""

        now = {k: v for k, v in os.environ.items() if k not in self.ignored}
        changed: dict[str, Optional[str]] = {k: v for k, v in now.items() if self.environ.get(k) != v}
        changed.update({k: None for k in self.environ if k not in now})
        return changed

    def restore(self) -> None:
        """Put the process back as it was before the job (idempotent)."""

        if self.restored is True:
            return
        self.restored = True
        for name in [k for k in os.environ if k not in self.environ and k not in self.ignored]:
            del os.environ[name]
        for name, value in self.environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value

        warnings.filters[:] = self.warning_filters  # type: ignore[index]
        mutated = getattr(warnings, "_filters_mutated", None)  # Drops the per-module "already warned" caches
        if callable(mutated):
            mutated()
        if "torch" in sys.modules:
            _close_process_group()
            _set_torch_switches(self.torch)
        _lightning_rank_reset()
        _reseed_from_os()
