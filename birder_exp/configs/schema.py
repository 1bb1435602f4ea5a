"""Typed schemas for the composed run config.

Group options are stored as plain nodes (see ``store.py``) and take their types from these dataclasses when
they merge into ``TrainConfig``: a misspelt key or a wrong type fails at compose time, not mid-run.
"""

from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """A registry architecture; built by ``registry.net_factory`` (or the task's factory)."""

    name: str = MISSING
    task: str = "image_classification"
    num_classes: Optional[int] = None  # None: counted from the data
    input_channels: int = 3
    size: Optional[list[int]] = None  # None: the architecture's default size
    config: dict[str, Any] = field(default_factory=dict)  # Merged over the registered config (model.config.x=...)
    backbone: Optional[str] = None  # Detection / SSL networks wrap a backbone
    encoder: Optional[str] = None  # MIM networks wrap an encoder


@dataclass
class PretrainedConfig:
    """A published (or user-registered) weights entry; its network becomes the model."""

    name: str = MISSING
    network: str = MISSING
    task: str = "image_classification"
    tag: Optional[str] = None
    resolution: list[int] = field(default_factory=lambda: [224, 224])
    backbone: Optional[str] = None
    encoder: Optional[str] = None
    file_format: str = "pt"


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.999
    every_n_steps: int = 1
    start_step: int = 0


@dataclass
class FinetuneConfig:
    """Which parameters train: the whole network by default."""

    freeze_body: bool = False  # Train only the classifier (linear probing)
    unfreeze_features: bool = False  # With freeze_body: also train the `features` block, if the network has one
    freeze_stages: Optional[int] = None  # Detector backbones: freeze the stem and the first N stages
    freeze_bn: bool = False  # Keep batch-norm statistics fixed


@dataclass
class ModuleConfig:
    """Loss and training-time switches of the task module."""

    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ema: EMAConfig = field(default_factory=EMAConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class AugmentConfig:
    """Train-time preset of torchvision.transforms.v2 (eval: resize + center crop)."""

    scale_min: float = 0.35  # RandomResizedCrop lower bound on the area kept
    hflip: float = 0.5
    color_jitter: float = 0.0  # Brightness / contrast / saturation strength; 0 disables
    rotation: float = 0.0  # Degrees
    crop_pct: float = 0.875  # Eval: resize to size / crop_pct, then center crop


@dataclass
class GoalConfig:
    """What the run should reach; the summary line says whether it did (None: nothing to check)."""

    test_acc: Optional[float] = None
    minutes: Optional[float] = None


@dataclass
class DataConfig:
    kind: str = "imagefolder"  # imagefolder | digits
    root: str = MISSING  # Class sub-folders, or train/ (+ val/, test/) each holding class sub-folders
    val_fraction: float = 0.1  # Used when root has no val/ folder
    test_fraction: float = 0.1  # Used when root has no test/ folder
    split_seed: int = 0
    batch_size: int = 64
    eval_batch_size: Optional[int] = None
    num_workers: int = 2
    pin_memory: bool = False
    size: Optional[list[int]] = None  # None: the model's size
    rgb_stats: Optional[dict[str, list[float]]] = None  # None: the entry's, else ImageNet's
    bad_images: str = "error"  # error | skip
    verify_images: bool = True  # Decode-check every file once at setup
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    goal: GoalConfig = field(default_factory=GoalConfig)
    digits_upscale: int = 4  # digits only: 8x8 -> 32x32


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    pretrained: Optional[PretrainedConfig] = None
    module: ModuleConfig = field(default_factory=ModuleConfig)
    data: DataConfig = MISSING
    optimizer: Any = MISSING
    lr_scheduler: Any = MISSING
    trainer: Any = MISSING
    callbacks: Any = None
    logger: Any = None
    paths: Any = MISSING
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    seed: Optional[int] = 42
    ckpt_path: Optional[str] = None  # Resume from this Lightning checkpoint
    dry_run: bool = False  # Compose, build the network on the meta device, exit (no data)
    run_test: bool = True  # Test the best checkpoint after fitting
