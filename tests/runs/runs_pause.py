"""A Lightning callback for the resume tests: it stops the run at a chosen optimizer step (after that step's
checkpoint was written) and waits there to be killed, writing a marker file so the test knows when to kill it."""

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class PauseAt(pl.Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"{os.getpid()} {trainer.current_epoch} {batch_idx}\n", encoding="utf-8")
            time.sleep(3600)
