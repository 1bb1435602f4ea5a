"""The embedded default dataset: scikit-learn's digits written once as an image folder."""

from pathlib import Path

import pytest
from PIL import Image

from birder_exp.configs.errors import ConfigError
from birder_exp.data import plan_image_folder
from birder_exp.data import write_digits

pytest.importorskip("sklearn")


def test_digits_folder_is_complete_split_and_upscaled(tmp_path: Path) -> None:
    root = write_digits(tmp_path / "digits", upscale=4)
    plan = plan_image_folder(root)
    assert plan.classes == [str(d) for d in range(10)]
    sizes = {split: len(samples) for split, samples in plan.splits.items()}
    assert sum(sizes.values()) == 1797  # Every image of sklearn's set, once
    assert 1240 <= sizes["train"] <= 1270 and 260 <= sizes["val"] <= 280 and 260 <= sizes["test"] <= 280
    with Image.open(plan.splits["test"][0][0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"

    stamp = (root / "train" / "0").stat().st_mtime_ns
    assert write_digits(root) == root  # Second call: nothing rewritten
    assert (root / "train" / "0").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # No staging folder left behind


def test_foreign_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="exists but is not a finished digits folder"):
        write_digits(tmp_path / "digits")


def test_default_data_group_trains_on_a_users_own_folder(tmp_path: Path) -> None:
    """`python -m birder_exp.train data.root=/data/birds` (data=digits by default) trains on the user's images."""

    from birder_exp.training.datamodule import ImageFolderDataModule

    root = tmp_path / "birds"
    for name in ("sparrow", "wren"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (12, 12), color=(i * 40, 10, 10)).save(root / name / f"{i}.png")

    module = ImageFolderDataModule({"kind": "digits", "root": str(root)}, size=(16, 16))
    module.prepare_data()
    assert sorted(p.name for p in root.iterdir()) == ["sparrow", "wren"]  # Nothing written into it
    assert module.class_to_idx == {"sparrow": 0, "wren": 1}
