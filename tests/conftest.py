"""Fixtures shared by the whole suite."""

import copy
import logging
import os
from collections.abc import Iterator

import pytest

from birder_exp.model_registry import registry

if "PYTEST_XDIST_WORKER" in os.environ:
    # One torch thread per xdist worker: two workers with two threads each on two cores spin against each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Restore the global registry (architectures, aliases, entries) after a test that registers things."""

    specs = dict(registry.specs)
    aliases = dict(registry.name_aliases)
    entries = copy.deepcopy(registry.pretrained)
    try:
        yield
    finally:
        registry._specs = specs
        registry.name_aliases = aliases
        registry._pretrained = entries


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """In-process Hydra runs install root handlers on the stream of the moment; later tests must not inherit them."""

    root = logging.getLogger()
    handlers = root.handlers[:]
    level = root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
