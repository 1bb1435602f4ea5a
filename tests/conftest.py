"""Fixtures shared by the whole suite."""

import copy
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
