"""scikit-learn's bundled handwritten digits written as an image folder: a real, small, offline dataset.

1,797 grey 8x8 images (values 0..16) of the digits 0-9, from the UCI optical-recognition set, which ships
inside scikit-learn (no download). They are split per class into train / val / test (70 / 15 / 15) with a
fixed seed and saved as RGB PNGs upscaled by nearest-neighbour, so ``torchvision.datasets.ImageFolder`` and
every transform see ordinary image files.
"""

import os
import random
import shutil
import tempfile
from pathlib import Path

from birder_exp.configs.errors import ConfigError

SPLITS = {"train": 0.70, "val": 0.15, "test": 0.15}
_DONE = ".complete"


def _load_digits() -> tuple[list[list[list[float]]], list[int]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(
            "data=digits needs scikit-learn (pip install 'birder_exp[train]'), or use data=imagefolder data.root=..."
        ) from None

    bunch = load_digits()
    return (bunch.images.tolist(), [int(t) for t in bunch.target])


def is_digits_folder(root: str | os.PathLike[str]) -> bool:
    """A folder write_digits finished (its completion marker is present)."""

    return (Path(root) / _DONE).is_file()


def write_digits(root: str | os.PathLike[str], upscale: int = 4, seed: int = 0) -> Path:
    """Write root/{train,val,test}/<digit>/<index>.png once; later calls return at once.

    The folder appears complete or not at all: it is written beside ``root`` and renamed into place.
    """

    root = Path(root)
    if is_digits_folder(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"data.root '{root}' exists but is not a finished digits folder (remove it to rewrite it)")
    if upscale < 1:
        raise ConfigError(f"data.digits_upscale must be >= 1, got {upscale}")

    from PIL import Image

    (images, targets) = _load_digits()
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        rng = random.Random(seed)
        for target, indices in sorted(by_class.items()):
            rng.shuffle(indices)
            n_train = round(len(indices) * SPLITS["train"])
            n_val = round(len(indices) * SPLITS["val"])
            parts = {"train": indices[:n_train], "val": indices[n_train : n_train + n_val]}
            parts["test"] = indices[n_train + n_val :]
            for split, members in parts.items():
                folder = staging / split / str(target)
                folder.mkdir(parents=True)
                for index in members:
                    pixels = bytes(round(v * 255 / 16) for row in images[index] for v in row)
                    image = Image.frombytes("L", (8, 8), pixels)
                    if upscale > 1:
                        image = image.resize((8 * upscale, 8 * upscale), Image.Resampling.NEAREST)
                    image.convert("RGB").save(folder / f"{index:04d}.png")

        (staging / _DONE).write_text("sklearn.datasets.load_digits\n", encoding="utf-8")
        try:
            os.replace(staging, root)  # Onto a missing or empty folder
        except OSError:
            if not (root / _DONE).is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # Another process finished first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    return root
