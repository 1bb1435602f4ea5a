"""A LightningDataModule over torchvision's ImageFolder, planned and checked by birder_exp.data.

The class list comes from the data (``num_classes`` is never asked of the user). Transforms are built when
the loaders are, so a pretrained entry's ``rgb_stats`` (known only once its file is read, in the
PretrainedWeights callback's ``setup``) still reaches them.
"""

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from typing import Optional

import lightning.pytorch as pl
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from birder_exp.configs.errors import ConfigError
from birder_exp.data import FolderPlan
from birder_exp.data import Sample
from birder_exp.data import plan_image_folder
from birder_exp.data import verify_images
from birder_exp.data import write_digits
from birder_exp.data.digits import is_digits_folder
from birder_exp.runs.resume import TrainOrder
from birder_exp.training.transforms import DEFAULT_RGB_STATS
from birder_exp.training.transforms import eval_transform
from birder_exp.training.transforms import train_transform

logger = logging.getLogger(__name__)
DATA_KINDS = ("imagefolder", "digits")


class PlannedImageFolder(ImageFolder):
    """ImageFolder (its loader, targets and class_to_idx) over a split that birder_exp.data already planned."""

    def __init__(self, root: str, classes: list[str], samples: list[Sample]) -> None:
        self._plan = (classes, samples)
        super().__init__(root, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = self._plan[0]
        return (classes, {name: index for index, name in enumerate(classes)})

    def make_dataset(  # type: ignore[override]
        self,
        directory: str,
        class_to_idx: dict[str, int],
        extensions: Optional[tuple[str, ...]] = None,
        is_valid_file: Any = None,
        allow_empty: bool = False,
    ) -> list[Sample]:
        return list(self._plan[1])


class ImageFolderDataModule(pl.LightningDataModule):
    def __init__(self, data: Mapping[str, Any], size: tuple[int, int], input_channels: int = 3) -> None:
        super().__init__()
        kind = data.get("kind", "imagefolder")
        if kind not in DATA_KINDS:
            raise ConfigError(f"unknown data.kind '{kind}' (valid: {', '.join(DATA_KINDS)})")

        self.data = dict(data)
        self.size = size
        self.input_channels = input_channels
        stats = self.data.get("rgb_stats")
        self.rgb_stats: dict[str, list[float]] = dict(stats) if stats is not None else dict(DEFAULT_RGB_STATS)
        self.rgb_stats_from_user = stats is not None
        self.plan: Optional[FolderPlan] = None
        self.datasets: dict[str, PlannedImageFolder] = {}
        self.train_order = TrainOrder()  # Seeded, checkpointed order: a run resumed mid-epoch continues exactly

    @property
    def root(self) -> str:
        return str(self.data["root"])

    def prepare_data(self) -> None:
        if self.data.get("kind") == "digits":
            root = Path(self.root)
            if root.is_dir() and not is_digits_folder(root) and any(root.iterdir()):
                # `data.root=/data/birds` with the default data group: the user's folder, not a place to write digits
                logger.info(f"data.root '{root}' holds images of its own: training on it as an image folder")
                return
            write_digits(root, upscale=int(self.data.get("digits_upscale", 4)))

    def plan_splits(self) -> FolderPlan:
        """Classes and checked samples of every split (once; the class count is needed before the module exists)."""

        if self.plan is None:
            plan = plan_image_folder(
                self.root,
                val_fraction=float(self.data.get("val_fraction", 0.1)),
                test_fraction=float(self.data.get("test_fraction", 0.1)),
                seed=int(self.data.get("split_seed", 0)),
            )
            if bool(self.data.get("verify_images", True)) is True:
                workers = max(2, int(self.data.get("num_workers", 0)), os.cpu_count() or 1)
                plan = verify_images(plan, str(self.data.get("bad_images", "error")), workers=workers)
                if len(plan.skipped) > 0:
                    (first, reason) = plan.skipped[0]
                    logger.warning(f"skipped {len(plan.skipped)} undecodable images (first: {first}: {reason})")
            self.plan = plan

        return self.plan

    @property
    def num_classes(self) -> int:
        return len(self.plan_splits().classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.plan_splits().class_to_idx

    def use_rgb_stats(self, rgb_stats: Mapping[str, Any]) -> None:
        """Normalise with a pretrained entry's statistics, unless the user set data.rgb_stats."""

        if self.rgb_stats_from_user is False:
            self.rgb_stats = {"mean": list(rgb_stats["mean"]), "std": list(rgb_stats["std"])}

    def setup(self, stage: Optional[str] = None) -> None:
        if len(self.datasets) > 0:
            return

        plan = self.plan_splits()
        for split, samples in plan.splits.items():
            self.datasets[split] = PlannedImageFolder(plan.root, plan.classes, samples)

    def _loader(self, split: str, train: bool) -> DataLoader[Any]:
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise ConfigError(
                f"the {split} split of '{self.root}' is empty (add {split}/ images or raise data.{split}_fraction)"
            )

        augment = self.data.get("augment") or {}
        if train is True:
            dataset.transform = train_transform(self.size, self.rgb_stats, augment, self.input_channels)
        else:
            crop_pct = float(augment.get("crop_pct", 0.875))
            dataset.transform = eval_transform(self.size, self.rgb_stats, crop_pct, self.input_channels)

        batch_size = int(self.data.get("batch_size", 64))
        if train is False:
            batch_size = int(self.data.get("eval_batch_size") or batch_size)
        workers = int(self.data.get("num_workers", 0))
        if train is True:
            return self.train_order.loader(
                dataset,
                batch_size=batch_size,
                drop_last=len(dataset) > batch_size,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=bool(self.data.get("pin_memory", False)),
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=bool(self.data.get("pin_memory", False)),
        )

    def state_dict(self) -> dict[str, Any]:
        return self.train_order.state_dict(self.trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_order.load_state_dict(state_dict)

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test", train=False)
