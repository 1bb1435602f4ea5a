"""Image-folder planning: classes, per-split samples and decode checks, each problem as one line.

Two layouts are accepted under ``root``:
- ``train/`` (with optional ``val/`` and ``test/``), each holding one sub-folder per class; a missing val or
  test split is carved out of train;
- one sub-folder per class directly, carved into train / val / test.
Carving is per class and seeded, so every run of a config sees the same split.
"""

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TypeAlias

from birder_exp.configs.errors import ConfigError

# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "val", "test")
BAD_IMAGE_MODES = ("error", "skip")

Sample: TypeAlias = tuple[str, int]


@dataclass
class FolderPlan:
    root: str
    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of undecodable files

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {len(samples)}" for name, samples in self.splits.items())
        return f"{len(self.classes)} classes; {sizes} images"


def _class_dirs(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(dirpath, name))

    return files


def _scan_split(folder: Path, classes: list[str], require_all: bool) -> dict[str, list[str]]:
    per_class: dict[str, list[str]] = {}
    for name in classes:
        class_dir = folder / name
        if not class_dir.is_dir():
            per_class[name] = []
            continue

        files = _image_files(class_dir)
        if len(files) == 0 and require_all is True:
            raise ConfigError(
                f"class folder '{class_dir}' has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove it"
            )
        per_class[name] = files

    return per_class


def _carve(per_class: dict[str, list[str]], fraction: float, seed: int) -> dict[str, list[str]]:
    """Move a seeded ``fraction`` of each class out of ``per_class`` (keeping at least one image behind)."""

    carved: dict[str, list[str]] = {}
    for name, files in per_class.items():
        if fraction <= 0.0 or len(files) < 2:
            carved[name] = []
            continue

        shuffled = list(files)
        random.Random(f"{seed}:{name}").shuffle(shuffled)
        count = min(max(1, round(len(files) * fraction)), len(files) - 1)
        carved[name] = sorted(shuffled[:count])
        kept = set(carved[name])
        per_class[name] = [f for f in files if f not in kept]

    return carved


def _samples(per_class: dict[str, list[str]], class_to_idx: dict[str, int]) -> list[Sample]:
    return [(path, class_to_idx[name]) for name, files in per_class.items() for path in files]


def plan_image_folder(
    root: str | os.PathLike[str], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> FolderPlan:
    """Classes and samples of each split; raises ConfigError naming the folder that is wrong."""

    path = Path(root)
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise ConfigError(f"data.root '{root}' {state} (set data.root=<folder with one sub-folder per class>)")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1), got {value}")

    split_layout = (path / "train").is_dir()
    train_dir = path / "train" if split_layout else path
    classes = _class_dirs(train_dir)
    if len(classes) == 0:
        raise ConfigError(f"data.root '{root}' has no class sub-folders (expected <root>/<class>/<image> or train/)")

    train = _scan_split(train_dir, classes, require_all=True)
    found: dict[str, dict[str, list[str]]] = {}
    for split in ("val", "test"):
        folder = path / split
        if split_layout and folder.is_dir():
            extra = sorted(set(_class_dirs(folder)) - set(classes))
            if len(extra) > 0:
                raise ConfigError(f"'{folder}' has class folders that train/ lacks: {', '.join(extra[:5])}")
            found[split] = _scan_split(folder, classes, require_all=False)

    if "val" not in found:
        found["val"] = _carve(train, val_fraction, seed)
    if "test" not in found:
        found["test"] = _carve(train, test_fraction, seed + 1)

    class_to_idx = {name: index for index, name in enumerate(classes)}
    plan = FolderPlan(root=str(path), classes=classes)
    plan.splits["train"] = _samples(train, class_to_idx)
    plan.splits["val"] = _samples(found["val"], class_to_idx)
    plan.splits["test"] = _samples(found["test"], class_to_idx)
    return plan


def _decode_problem(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"

    return None


def verify_images(plan: FolderPlan, mode: str = "error", workers: int = 4) -> FolderPlan:
    """Decode every image once; ``mode='error'`` stops at the first bad file, ``'skip'`` drops and counts them."""

    if mode not in BAD_IMAGE_MODES:
        raise ConfigError(f"data.bad_images must be one of {', '.join(BAD_IMAGE_MODES)}, got '{mode}'")

    paths = [path for samples in plan.splits.values() for (path, _) in samples]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = dict(zip(paths, pool.map(_decode_problem, paths), strict=True))

    bad = {path: problem for path, problem in problems.items() if problem is not None}
    if len(bad) > 0 and mode == "error":
        (path, problem) = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(f"cannot decode image '{path}': {problem}{more}; set data.bad_images=skip to skip such files")

    for split, samples in plan.splits.items():
        plan.splits[split] = [sample for sample in samples if sample[0] not in bad]
    plan.skipped = sorted(bad.items())
    if len(plan.splits["train"]) == 0:
        raise ConfigError(f"data.root '{plan.root}' has no decodable training images")

    return plan
