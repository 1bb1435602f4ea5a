"""Lightning callbacks every training run gets from birder_exp.runs (``run_callbacks()``).

``FinalWeightsDigest`` writes a sha256 of the weights at the end of fitting (before testing loads the best
checkpoint) into the run record, from every rank: rank 0 into ``run.json``, the others into
``.birder_exp/rank<N>.json``. Reruns and resumptions are checked against it; in a distributed run every rank's
digest must agree. It also records torch's thread count, which a rerun reuses. ``ResumeRandomState`` is in
``birder_exp.runs.resume``.
"""

import hashlib
import logging
from typing import Optional

import lightning.pytorch as pl
import torch
from torch import nn

from birder_exp.runs import record
from birder_exp.runs.resume import ResumeRandomState

logger = logging.getLogger(__name__)


def weights_digest(module: nn.Module) -> str:
    """sha256 over every entry of the state dict (name, dtype, shape and bytes), in name order."""

    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if not isinstance(value, torch.Tensor):
            digest.update(repr(value).encode())
            continue
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel() > 0:
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())

    return digest.hexdigest()


def _run_dir(trainer: pl.Trainer) -> Optional[str]:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.output_dir)
    return None


class FinalWeightsDigest(pl.Callback):
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_dir = _run_dir(trainer)
        if run_dir is not None and trainer.global_rank == 0:
            # CPU results depend on how reductions split over threads: a rerun uses the same number
            record.update_record(run_dir, torch_threads=torch.get_num_threads())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_dir = _run_dir(trainer)
        if run_dir is None:
            return
        try:
            digest = weights_digest(getattr(pl_module, "net", pl_module))
        except Exception as exc:  # Sharded strategies may not expose full tensors on every rank
            logger.warning(f"final weights digest skipped: {type(exc).__name__}: {exc}")
            return

        fields = {"final_weights_sha256": digest, "final_step": int(trainer.global_step)}
        if trainer.global_rank == 0:
            record.update_record(run_dir, **fields)
        else:
            record.write_rank_record(run_dir, trainer.global_rank, {**fields, "world_size": trainer.world_size})


def run_callbacks() -> list[pl.Callback]:
    return [FinalWeightsDigest(), ResumeRandomState()]
