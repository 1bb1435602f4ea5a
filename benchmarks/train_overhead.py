"""Claim: training through birder_exp's LightningModule costs <= 5% against a bare PyTorch loop on the same
network, data, optimizer, schedule and loss (CPU; bare steps/s / Lightning steps/s <= 1.05).

Both loops run the same resnet_v1_18 at 64x64 on the same in-memory batches, fed by the same DataLoader; the
Lightning side uses ClassificationModule (as `python -m birder_exp.train` does) with logging of the loss every
step, and no progress bar, checkpointing or validation (those are per-epoch costs, not per-step). Rounds
alternate, and the medians are compared.
"""

import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from birder_exp.training.classification import ClassificationModule
from birder_exp.training.optim import build_optimizer
from birder_exp.training.optim import build_scheduler

MODEL = {"name": "resnet_v1_18", "size": [64, 64]}
OPTIMIZER = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}
SCHEDULER = {"name": "cosine", "warmup_epochs": 0}
BATCH = 32
CLASSES = 10
WARMUP = 3
STEPS = 15
ROUNDS = 5


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(BATCH, 3, 64, 64, generator=gen), torch.randint(0, CLASSES, (BATCH,), generator=gen))
        for _ in range(WARMUP + STEPS)
    ]


def _module() -> ClassificationModule:
    torch.manual_seed(0)
    return ClassificationModule(
        model=MODEL, num_classes=CLASSES, optimizer=OPTIMIZER, lr_scheduler=SCHEDULER, module={"label_smoothing": 0.1}
    )


def bare_loop(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    net = _module().net
    net.train()
    optimizer = build_optimizer(net, OPTIMIZER)
    scheduler = build_scheduler(optimizer, SCHEDULER, total_steps=len(batches), max_epochs=1)["scheduler"]
    start = 0.0
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)  # The same feed as Lightning's
    for index, (images, targets) in enumerate(loader):
        if index == WARMUP:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(images), targets, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        scheduler.step()

    return STEPS / (time.perf_counter() - start)


def lightning_loop(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    import lightning.pytorch as pl

    class Clock(pl.Callback):
        start = 0.0
        end = 0.0

        def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == WARMUP:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, idx: int) -> None:
            self.end = time.perf_counter()

    clock = Clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(_module(), train_dataloaders=loader)
    return STEPS / (clock.end - clock.start)


def main() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(torch.get_num_threads())
    batches = _batches()
    bare = []
    ours = []
    for _ in range(ROUNDS):
        bare.append(bare_loop(batches))
        ours.append(lightning_loop(batches))

    bare_sps = statistics.median(bare)
    ours_sps = statistics.median(ours)
    ratio = bare_sps / ours_sps
    verdict = "met" if ratio <= 1.05 else "MISSED"
    print(
        f"train overhead (resnet_v1_18 64x64, batch {BATCH}, CPU): LightningModule {ours_sps:.3f} steps/s, "
        f"bare loop {bare_sps:.3f} steps/s, ratio x{ratio:.3f} (target <= 1.05: {verdict})"
    )


if __name__ == "__main__":
    sys.exit(main())
