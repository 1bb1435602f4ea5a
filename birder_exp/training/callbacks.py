"""Callbacks the run adds on its own: PretrainedWeights (``pretrained=<entry>``)."""

import logging
from collections.abc import Mapping
from typing import Any
from typing import Optional

import lightning.pytorch as pl
from torch import nn

from birder_exp.configs.errors import ConfigError

logger = logging.getLogger(__name__)


class PretrainedWeights(pl.Callback):
    """Load a weights entry into ``pl_module.net`` in ``setup``, before the strategy wraps the module.

    The classifier is reset when the entry's class count differs from the data's; otherwise the whole state
    loads strictly. Local rank 0 downloads (the others wait at a barrier, then read the cached file). Nothing
    happens when the run resumes from a checkpoint: its weights win.
    """

    def __init__(
        self,
        entry: str,
        *,
        file_format: str = "pt",
        size: Optional[tuple[int, int]] = None,
        custom_config: Optional[Mapping[str, Any]] = None,
        resume_from: Optional[str] = None,
    ) -> None:
        self.entry = entry
        self.resume_from = resume_from  # Lightning sets trainer.ckpt_path only after setup: the run passes it
        self.file_format = file_format
        self.size = size
        self.custom_config = dict(custom_config) if custom_config is not None else None
        self.loaded = False
        self.model_info: Any = None

    def _load(self) -> tuple[nn.Module, Any]:
        from birder_exp.weights import load_pretrained_model
        from birder_exp.weights.errors import WeightsError

        try:
            return load_pretrained_model(  # type: ignore[no-any-return]
                self.entry,
                file_format=self.file_format,
                new_size=self.size,
                custom_config=self.custom_config,
                progress_bar=False,
            )
        except WeightsError as exc:
            raise ConfigError(f"pretrained={self.entry}: {exc}") from exc

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.loaded is True:
            return
        self.loaded = True
        resume_from = self.resume_from or trainer.ckpt_path
        if resume_from is not None:
            logger.info(f"Resuming from {resume_from}: pretrained weights of '{self.entry}' not loaded")
            return

        if trainer.local_rank == 0:
            (net, info) = self._load()
        trainer.strategy.barrier("birder_exp_pretrained")
        if trainer.local_rank != 0:
            (net, info) = self._load()

        target: nn.Module = pl_module.net  # type: ignore[assignment]
        num_classes = getattr(target, "num_classes", None)
        if num_classes is not None and getattr(net, "num_classes", None) != num_classes:
            logger.info(f"'{self.entry}' has {net.num_classes} classes, the data {num_classes}: classifier reset")
            net.reset_classifier(num_classes)  # type: ignore[operator]

        try:
            target.load_state_dict(net.state_dict(), strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"pretrained={self.entry} does not fit the model (check model.config): {first}") from exc

        self.model_info = info
        rgb_stats = getattr(info, "rgb_stats", None)
        datamodule = getattr(trainer, "datamodule", None)
        if rgb_stats is not None and datamodule is not None and hasattr(datamodule, "use_rgb_stats"):
            datamodule.use_rgb_stats(rgb_stats)

        stats = getattr(datamodule, "rgb_stats", None)
        logger.info(f"Loaded pretrained weights '{self.entry}'; input normalisation {stats}")
