"""birder_exp.data: planning image folders (layouts, seeded carving, one-line errors) and decode checks."""

from pathlib import Path

import pytest
from PIL import Image

from birder_exp.configs.errors import ConfigError
from birder_exp.data import plan_image_folder
from birder_exp.data import verify_images


def _images(folder: Path, count: int, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (size, size), (index * 20 % 255, 10, 10)).save(folder / f"{index}.png")


def test_flat_layout_is_carved_per_class_and_seeded(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        _images(tmp_path / name, 20)

    plan = plan_image_folder(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert plan.classes == ["cat", "dog"]
    assert [len(plan.splits[s]) for s in ("train", "val", "test")] == [28, 8, 4]
    for split in ("val", "test"):
        assert {label for _, label in plan.splits[split]} == {0, 1}  # Stratified

    every = [path for samples in plan.splits.values() for path, _ in samples]
    assert len(every) == len(set(every)) == 40  # A partition
    again = plan_image_folder(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert again.splits == plan.splits
    other = plan_image_folder(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert other.splits["val"] != plan.splits["val"]


def test_split_layout_keeps_given_splits_and_carves_a_missing_test(tmp_path: Path) -> None:
    _images(tmp_path / "train" / "a", 10)
    _images(tmp_path / "train" / "b", 10)
    _images(tmp_path / "val" / "b", 3)  # A split may lack a class

    plan = plan_image_folder(tmp_path, val_fraction=0.5, test_fraction=0.2)
    assert plan.class_to_idx == {"a": 0, "b": 1}
    assert len(plan.splits["val"]) == 3 and {label for _, label in plan.splits["val"]} == {1}
    assert len(plan.splits["test"]) == 4 and len(plan.splits["train"]) == 16


def test_nested_files_and_other_extensions(tmp_path: Path) -> None:
    _images(tmp_path / "a" / "sub", 2)
    _images(tmp_path / "b", 2)
    (tmp_path / "b" / "notes.txt").write_text("not an image")

    plan = plan_image_folder(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert len(plan.splits["train"]) == 4
    assert all(path.endswith(".png") for path, _ in plan.splits["train"])


def test_missing_root_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.root '.*nowhere' does not exist \(set data.root=") as info:
        plan_image_folder(tmp_path / "nowhere")
    assert "\n" not in str(info.value)


def test_root_without_class_folders(tmp_path: Path) -> None:
    _images(tmp_path, 2)
    with pytest.raises(ConfigError, match="has no class sub-folders"):
        plan_image_folder(tmp_path)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    _images(tmp_path / "full", 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"class folder '.*empty' has no images \(\.jpg"):
        plan_image_folder(tmp_path)


def test_val_classes_must_exist_in_train(tmp_path: Path) -> None:
    _images(tmp_path / "train" / "a", 3)
    _images(tmp_path / "val" / "zebra", 1)
    with pytest.raises(ConfigError, match="class folders that train/ lacks: zebra"):
        plan_image_folder(tmp_path)


def test_bad_fraction(tmp_path: Path) -> None:
    _images(tmp_path / "a", 3)
    with pytest.raises(ConfigError, match=r"data.val_fraction must be in \[0, 1\), got 1.5"):
        plan_image_folder(tmp_path, val_fraction=1.5)


def _with_broken_images(tmp_path: Path) -> Path:
    _images(tmp_path / "a", 6)
    _images(tmp_path / "b", 6)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = (tmp_path / "b" / "0.png").read_bytes()
    (tmp_path / "b" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    return tmp_path


def test_undecodable_images_error_by_default(tmp_path: Path) -> None:
    plan = plan_image_folder(_with_broken_images(tmp_path), val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ConfigError, match=r"cannot decode image '.*' .*\(and 1 more\); set data.bad_images=skip") as e:
        verify_images(plan, "error")
    assert "\n" not in str(e.value)


def test_undecodable_images_skipped_and_counted(tmp_path: Path) -> None:
    plan = plan_image_folder(_with_broken_images(tmp_path), val_fraction=0.0, test_fraction=0.0)
    assert len(plan.splits["train"]) == 14
    plan = verify_images(plan, "skip")
    assert len(plan.splits["train"]) == 12
    assert sorted(Path(path).name for path, _ in plan.skipped) == ["broken.png", "truncated.png"]


def test_unknown_bad_image_mode(tmp_path: Path) -> None:
    _images(tmp_path / "a", 2)
    with pytest.raises(ConfigError, match=r"data\.bad_images must be one of error, skip, got 'ignore'"):
        verify_images(plan_image_folder(tmp_path), "ignore")
