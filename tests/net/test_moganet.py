"""MogaNet: Birder-exact on its fixtures, every name built, the multi-order blocks, the encoder interfaces."""

from typing import Any

import pytest
import torch
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import fixture_names
from family_checks import check_birder_exact
from staged_checks import check_family_catalogue
from staged_checks import check_meta_layout
from staged_checks import check_staged_behaviour
from staged_checks import family_names

from birder_exp.model_registry import registry
from birder_exp.net.moganet import MogaNet
from birder_exp.net.moganet import MultiOrderDWConv

FAMILY = "moganet"
FIXTURES = fixture_names(FAMILY)
TINY: dict[str, Any] = {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 2, 1], "drop_path_rate": 0.1}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("moganet_test_tiny", MogaNet, config=TINY)
    return "moganet_test_tiny"


def test_catalogue() -> None:
    check_family_catalogue(FAMILY, "MogaNet", 6, pretrain_encoder=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


@pytest.mark.parametrize("name", [n for n in family_names(FAMILY) if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)


def test_multi_order_split() -> None:
    """Channels split 1:3:4; the 7x7 order sees the last half, dilated by 3 (padding keeps the size)."""

    conv = MultiOrderDWConv(16, dw_dilation=[1, 2, 3], channel_split=[1, 3, 4])
    assert (conv.embed_dims_0, conv.embed_dims_1, conv.embed_dims_2) == (2, 6, 8)
    assert conv.dw_conv2.kernel_size == (7, 7) and conv.dw_conv2.padding == (9, 9)
    assert conv(torch.randn(1, 16, 7, 7)).shape == (1, 16, 7, 7)

    with torch.device("meta"):
        xl = registry.net_factory("moganet_xl", 10)
    assert [len(stage) for stage in xl.body] == [7, 8, 46, 6]  # Downsample (after stage 1), blocks, final norm
    assert xl.body.stage1[0].mlp.fc1.out_channels == 8 * 96 and xl.body.stage4[1].mlp.fc1.out_channels == 4 * 960


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(MogaNet, "moganet_test_custom", TINY, expected_dim=32)


def test_bad_config() -> None:
    check_bad_config(MogaNet)
    with pytest.raises(ValueError, match=r"need 4 entries each \(one per stage\), got 3 and 4"):
        MogaNet(3, 10, config={**TINY, "embed_dims": [8, 16, 24]})
    with pytest.raises(ValueError, match=r"multiple of 8 \(the channel split \[1, 3, 4\]\), got 12"):
        MogaNet(3, 10, config={**TINY, "embed_dims": [8, 12, 24, 32]})


def test_staged_behaviour(small: str) -> None:
    check_staged_behaviour(small, frozen_stages=2, checkpoint_segments=2, masked=True)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
