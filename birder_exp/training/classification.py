"""Image classification with Lightning.

The hyper-parameters are plain config dicts (never an nn.Module), so ``ClassificationModule.load_from_checkpoint``
rebuilds the network through the registry.
"""

from collections.abc import Mapping
from typing import Any
from typing import Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from birder_exp.configs.errors import ConfigError
from birder_exp.training.build import build_network
from birder_exp.training.build import resolve_size
from birder_exp.training.optim import build_optimizer
from birder_exp.training.optim import build_scheduler


def _plain(value: Any) -> Any:
    """OmegaConf containers -> dicts / lists (hparams must pickle and read back without OmegaConf)."""

    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


class ClassificationModule(pl.LightningModule):
    def __init__(
        self,
        model: Mapping[str, Any],
        num_classes: int,
        optimizer: Mapping[str, Any],
        lr_scheduler: Mapping[str, Any],
        module: Optional[Mapping[str, Any]] = None,
        class_to_idx: Optional[Mapping[str, int]] = None,
    ) -> None:
        super().__init__()
        model = _plain(model)
        module = _plain(module) if module is not None else {}
        self.save_hyperparameters(
            {
                "model": model,
                "num_classes": num_classes,
                "optimizer": _plain(optimizer),
                "lr_scheduler": _plain(lr_scheduler),
                "module": module,
                "class_to_idx": _plain(class_to_idx) if class_to_idx is not None else None,
            }
        )
        self.num_classes = num_classes
        self.size = resolve_size(model)
        self.net = build_network(model, num_classes, self.size)

        self.label_smoothing = float(module.get("label_smoothing", 0.0))
        self.batch_mix = _batch_mix(
            num_classes, float(module.get("mixup_alpha", 0.0)), float(module.get("cutmix_alpha", 0.0))
        )
        finetune = module.get("finetune") or {}
        self.freeze_bn = bool(finetune.get("freeze_bn", False))
        self._apply_freezing(finetune)

        top_k = min(5, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")

    def _apply_freezing(self, finetune: Mapping[str, Any]) -> None:
        if bool(finetune.get("freeze_body", False)) is True:
            freeze = getattr(self.net, "freeze", None)
            if freeze is None:
                raise ConfigError(f"module.finetune.freeze_body: {type(self.net).__name__} has no freeze()")
            freeze(freeze_classifier=False, unfreeze_features=bool(finetune.get("unfreeze_features", False)))

        stages = finetune.get("freeze_stages")
        if stages is not None:
            freeze_stages = getattr(self.net, "freeze_stages", None)
            if freeze_stages is None:
                raise ConfigError(
                    f"module.finetune.freeze_stages: {type(self.net).__name__} is not a detector backbone (no stages)"
                )
            freeze_stages(int(stages))

    def train(self, mode: bool = True) -> "ClassificationModule":
        super().train(mode)
        if mode is True and self.freeze_bn is True:
            for layer in self.net.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()

        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        (images, targets) = batch
        if self.batch_mix is not None:
            (images, targets) = self.batch_mix(images, targets)

        logits = self.net(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        (images, targets) = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, targets)
        acc = self.val_acc if stage == "val" else self.test_acc
        acc_top5 = self.val_acc_top5 if stage == "val" else self.test_acc_top5
        acc(logits, targets)
        acc_top5(logits, targets)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", acc, prog_bar=True)
        self.log(f"{stage}/acc_top5", acc_top5)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.net(images), dim=1)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.net, self.hparams["optimizer"])
        scheduler = build_scheduler(
            optimizer,
            self.hparams["lr_scheduler"],
            total_steps=int(self.trainer.estimated_stepping_batches),
            max_epochs=self.trainer.max_epochs,
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _batch_mix(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> Optional[v2.Transform]:
    """MixUp and / or CutMix on whole batches (one of them picked per batch when both are on)."""

    ops: list[v2.Transform] = []
    if mixup_alpha > 0.0:
        ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0.0:
        ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if len(ops) == 0:
        return None
    if len(ops) == 1:
        return ops[0]

    return v2.RandomChoice(ops)
