"""GhostNet v2: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

import pytest
import torch
import torch.nn.functional as F
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import check_outputs
from conformance import fixture_names
from ghost_checks import check_ghost_meta_layout
from staged_checks import check_family_catalogue
from staged_checks import check_staged_behaviour
from staged_checks import family_names

from birder_exp.model_registry import registry
from birder_exp.net.ghostnet_v1 import GhostModule
from birder_exp.net.ghostnet_v2 import GhostModule_v2
from birder_exp.net.ghostnet_v2 import GhostNet_v2

FIXTURES = fixture_names("ghostnet_v2")


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config("ghostnet_v2_test_tiny", GhostNet_v2, config={"width": 0.25})
    return "ghostnet_v2_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue("ghostnet_v2", "GhostNet_v2", 3, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", family_names("ghostnet_v2"))
def test_meta_layout(name: str) -> None:
    check_ghost_meta_layout(name)


def test_attention_from_third_block(tiny: str) -> None:
    net = build(tiny)
    blocks = [block for stage in net.body for block in stage if hasattr(block, "ghost1")]
    assert [type(block.ghost1) for block in blocks[:3]] == [GhostModule, GhostModule, GhostModule_v2]
    assert all(isinstance(block.ghost1, GhostModule_v2) for block in blocks[2:])
    assert all(type(block.ghost2) is GhostModule for block in blocks)


def test_dfc_attention_gate() -> None:
    """On an odd-sized input the half-resolution gate is upsampled (nearest) to the ghost output's size."""

    module = GhostModule_v2(8, 6, kernel_size=(1, 1), stride=(1, 1), ratio=2, dw_size=(3, 3), use_act=True).eval()
    x = torch.randn(2, 8, 7, 9)
    with torch.inference_mode():
        primary = module.primary_conv(x)
        ghost = torch.concat([primary, module.cheap_operation(primary)], dim=1)
        gate = torch.sigmoid(module.short_conv(F.avg_pool2d(x, 2)))
        assert gate.shape == (2, 6, 3, 4)
        expected = ghost * F.interpolate(gate, size=(7, 9), mode="nearest")
        torch.testing.assert_close(module(x), expected)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(GhostNet_v2, "ghostnet_v2_test_custom", {"width": 0.3}, 1280)


def test_bad_config() -> None:
    check_bad_config(GhostNet_v2)
    with pytest.raises(ValueError, match="width must be a positive multiplier"):
        GhostNet_v2(3, 10, config={"width": -1.0})


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
