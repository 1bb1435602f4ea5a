"""Fixtures of the training tests: the tiny plugin network (in-process and as an installed plugin) and data."""

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from train_testkit import PLUGIN_MODULE  # noqa: E402
from train_testkit import TINY_NET_SOURCE  # noqa: E402
from train_testkit import write_image_folder  # noqa: E402
from train_testkit import write_plugin  # noqa: E402


@pytest.fixture(scope="session")
def tiny_module() -> types.ModuleType:
    """The plugin's source as an importable module, so in-process runs and checkpoints can resolve the class."""

    module = sys.modules.get(PLUGIN_MODULE)
    if module is None:
        module = types.ModuleType(PLUGIN_MODULE)
        exec(compile(TINY_NET_SOURCE, f"<{PLUGIN_MODULE}>", "exec"), module.__dict__)
        sys.modules[PLUGIN_MODULE] = module

    return module


@pytest.fixture
def tiny_net(tiny_module: types.ModuleType, clean_registry: None) -> Iterator[str]:
    """tiny_train_net registered in this process for one test; yields its name."""

    tiny_module.register()
    yield "tiny_train_net"


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plugin(tmp_path_factory.mktemp("plugins"))


@pytest.fixture(scope="session")
def split_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ val/ test/ with 3 classes of 16x16 images."""

    return write_image_folder(tmp_path_factory.mktemp("split_data"), layout="split", per_class=8)


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "flat", layout="flat", per_class=10)
