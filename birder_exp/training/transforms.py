"""torchvision.transforms.v2 presets for classification: random-resized-crop training, resize + center-crop eval."""

from collections.abc import Mapping
from typing import Any

import torch
from torchvision.transforms import v2

# ImageNet statistics: the normalisation when neither the user nor a pretrained entry gives one
DEFAULT_RGB_STATS: dict[str, list[float]] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _stats(rgb_stats: Mapping[str, Any], channels: int) -> tuple[list[float], list[float]]:
    mean = [float(v) for v in rgb_stats["mean"]]
    std = [float(v) for v in rgb_stats["std"]]
    if channels == len(mean):
        return (mean, std)
    if channels == 1:
        return ([sum(mean) / len(mean)], [sum(std) / len(std)])

    raise ValueError(f"rgb_stats has {len(mean)} channels, the model takes {channels}")


def _tail(rgb_stats: Mapping[str, Any], channels: int) -> list[Any]:
    (mean, std) = _stats(rgb_stats, channels)
    ops: list[Any] = []
    if channels == 1:
        ops.append(v2.Grayscale(num_output_channels=1))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]
    return ops


def train_transform(
    size: tuple[int, int], rgb_stats: Mapping[str, Any], augment: Mapping[str, Any], channels: int = 3
) -> v2.Compose:
    ops: list[Any] = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(size, scale=(float(augment.get("scale_min", 0.35)), 1.0), antialias=True),
    ]
    if float(augment.get("hflip", 0.0)) > 0.0:
        ops.append(v2.RandomHorizontalFlip(float(augment["hflip"])))
    if float(augment.get("rotation", 0.0)) > 0.0:
        ops.append(v2.RandomRotation(float(augment["rotation"])))
    jitter = float(augment.get("color_jitter", 0.0))
    if jitter > 0.0:
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))

    return v2.Compose(ops + _tail(rgb_stats, channels))


def eval_transform(
    size: tuple[int, int], rgb_stats: Mapping[str, Any], crop_pct: float = 0.875, channels: int = 3
) -> v2.Compose:
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"data.augment.crop_pct must be in (0, 1], got {crop_pct}")

    resize = (round(size[0] / crop_pct), round(size[1] / crop_pct))
    ops: list[Any] = [v2.PILToTensor(), v2.Resize(resize, antialias=True)]
    if resize != size:
        ops.append(v2.CenterCrop(size))

    return v2.Compose(ops + _tail(rgb_stats, channels))
