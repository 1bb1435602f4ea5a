"""Building networks on the meta device without running their weight initialisers.

A meta build is a layout (dry runs) or an empty shell that loaded weights replace (``assign=True``), so the values
its initialisers would draw are never read. On meta tensors ``torch.nn.init``'s random fills still run, through
Python decompositions at about 1 ms each: most of a meta build's time for a network with hundreds of layers.
"""

import contextlib
import functools
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# The torch.nn.init functions that fill a tensor in place (layers' reset_parameters call them by module attribute)
_INITIALISERS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


def _meta_skipping(init: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(init)
    def fill(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return init(tensor, *args, **kwargs)

    fill._birder_exp_meta_skipping = True  # type: ignore[attr-defined]
    return fill


@contextlib.contextmanager
def skip_meta_init() -> Iterator[None]:
    """Within the block, ``torch.nn.init`` leaves meta tensors as they are (other tensors are filled as usual, so a
    thread building on the CPU meanwhile is unaffected)."""

    saved: dict[str, Callable[..., Any]] = {}
    for name in _INITIALISERS:
        init = getattr(nn.init, name, None)
        if init is None or getattr(init, "_birder_exp_meta_skipping", False) is True:
            continue  # Absent in this torch, or already wrapped by an enclosing block
        saved[name] = init
        setattr(nn.init, name, _meta_skipping(init))
    try:
        yield
    finally:
        for name, init in saved.items():
            setattr(nn.init, name, init)


@contextlib.contextmanager
def meta_build() -> Iterator[None]:
    """Modules created in the block live on the meta device and skip their initialisers."""

    with torch.device("meta"), skip_meta_init():
        yield
