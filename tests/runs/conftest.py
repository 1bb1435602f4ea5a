"""Fixtures of the runs tests: the tiny plugin, a tiny image folder, and a working directory per test."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from runs_kit import write_image_folder  # noqa: E402
from runs_kit import write_plugin  # noqa: E402


@pytest.fixture(scope="session")
def runs_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin(tmp_path_factory.mktemp("runs_plugin"))


@pytest.fixture(scope="session")
def runs_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ val/ test/ of 3 classes at 16x16 (12 / 3 / 3 images per class)."""

    return write_image_folder(tmp_path_factory.mktemp("runs_images"))
