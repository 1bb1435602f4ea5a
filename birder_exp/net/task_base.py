"""Config handling shared by the task networks (detection, MIM, SSL): a registered config is deep-copied,
then updated with the caller's."""

import copy
from typing import Any
from typing import Optional


def merge_config(obj: Any, config: Optional[dict[str, Any]]) -> None:
    if hasattr(obj, "config") is False:
        obj.config = config
    elif obj.config is not None:
        obj.config = copy.deepcopy(obj.config)

    if config is not None:
        if obj.config is None:
            obj.config = {}
        obj.config.update(config)


def check_size(owner: str, size: Any) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"{owner}: size must be two positive ints (h, w), got {size!r}")

    return (size[0], size[1])
