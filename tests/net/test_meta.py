"""meta_build: the same layout as a plain meta-device build, without running initialisers on meta tensors."""

import torch
from torch import nn

from birder_exp.model_registry import registry
from birder_exp.net.meta import meta_build
from birder_exp.net.meta import skip_meta_init


def _layout(net: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in net.state_dict().items()]


def test_layout_equals_a_plain_meta_build() -> None:
    with torch.device("meta"):
        plain = registry.net_factory("vit_t16", 10)
    with meta_build():
        skipped = registry.net_factory("vit_t16", 10)
    assert _layout(skipped) == _layout(plain)
    assert all(p.is_meta for p in skipped.parameters())


def test_initialisers_still_fill_other_devices_and_are_restored() -> None:
    original = nn.init.kaiming_uniform_
    with skip_meta_init():
        assert nn.init.kaiming_uniform_ is not original
        with skip_meta_init():  # Nested blocks wrap once and restore in order
            torch.manual_seed(0)
            layer = nn.Linear(64, 64)  # On the CPU: initialised as usual
        assert nn.init.kaiming_uniform_ is not original
    assert nn.init.kaiming_uniform_ is original
    torch.manual_seed(0)
    assert torch.equal(layer.weight, nn.Linear(64, 64).weight)
