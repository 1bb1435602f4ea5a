"""ResNeXt (with SE and ResNeXt-D options): Birder-exact on its fixtures, every name builds, and the behaviour
Birder's class offers."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import check_outputs
from conformance import fixture_names
from staged_checks import check_family_catalogue
from staged_checks import check_meta_layout
from staged_checks import check_staged_behaviour
from staged_checks import family_names
from torchvision.ops import SqueezeExcitation

from birder_exp.model_registry import registry
from birder_exp.net.resnext import ResNeXt

FIXTURES = fixture_names("resnext")
TINY_CONFIG = {"units": [1, 1, 2, 1], "groups": 4, "base_width": 2, "squeeze_excitation": True}


@pytest.fixture
def tiny(clean_registry: None) -> str:
    registry.register_model_config(
        "resnext_test_tiny", ResNeXt, config={**TINY_CONFIG, "deep_stem": True, "avg_down": True}
    )
    return "resnext_test_tiny"


def test_catalogue() -> None:
    names = check_family_catalogue("resnext", "ResNeXt", 16, pretrain_encoder=True)
    assert sum(name.startswith("se_") for name in names) == 8
    assert sum("_d_" in name for name in names) == 6


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("resnext") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=True)


def test_group_widths() -> None:
    """Bottleneck width = int(stage width * base_width / 64) * groups; 32x8 doubles it, 64x4 too, by groups."""

    def first_grouped(name: str) -> tuple[int, int]:
        with torch.device("meta"):
            net = registry.net_factory(name, 10)
        conv = net.body.stage1[0].block1[1][0]
        assert isinstance(conv, torch.nn.Conv2d)
        return (conv.out_channels, conv.groups)

    assert first_grouped("resnext_50") == (128, 32)
    assert first_grouped("resnext_101_32x8") == (256, 32)
    assert first_grouped("resnext_101_64x4") == (256, 64)


def test_d_variant_shortcut_and_se(tiny: str) -> None:
    net = build(tiny)
    assert len(net.stem) == 4  # Three 3x3 convolutions, then max pooling
    shortcut = net.body.stage2[0].block2
    assert isinstance(shortcut[0], torch.nn.AvgPool2d) and shortcut[1].stride == (1, 1)
    assert isinstance(net.body.stage1[0].se, SqueezeExcitation)
    assert net.return_channels == [256, 512, 1024, 2048]


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(ResNeXt, "resnext_test_custom", TINY_CONFIG, 2048)


def test_bad_config() -> None:
    check_bad_config(ResNeXt)
    with pytest.raises(ValueError, match="units must be 4 positive stage depths"):
        ResNeXt(3, 10, config={"units": [1, 1, 1]})


def test_input_channels_not_adjustable(tiny: str) -> None:
    with pytest.raises(RuntimeError, match="does not support input channel adjustment"):
        build(tiny).adjust_input_channels(1)


def test_behaviour(tiny: str) -> None:
    check_staged_behaviour(tiny, frozen_stages=2, masked=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(tiny: str) -> None:
    check_scriptable(tiny)
