"""MobileNet v2: Birder-exact on its fixture, every name builds, and the behaviour Birder's class offers."""

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

from birder_exp.layers.inverted_residual import InvertedResidual
from birder_exp.net.mobilenet_v2 import MobileNet_v2

FIXTURES = fixture_names("mobilenet_v2")
SMALL = "mobilenet_v2_0_25"


def test_catalogue() -> None:
    check_family_catalogue("mobilenet_v2", "MobileNet_v2", 8, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("mobilenet_v2") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_stage0_and_widths() -> None:
    """Birder's layout: the unstrided first block is stage0, not returned; the head never narrows below 1280."""

    net = build(SMALL)
    assert list(dict(net.body.named_children())) == ["stage0", "stage1", "stage2", "stage3", "stage4"]
    assert [len(stage) for stage in net.body] == [1, 2, 3, 7, 4]
    assert net.return_channels == [8, 8, 24, 80]
    assert (net.stem_width, net.feature_dim, net.embedding_size) == (8, 80, 1280)
    assert build("mobilenet_v2_2_0").embedding_size == 2560
    blocks = [block for stage in net.body for block in stage]
    assert all(isinstance(block, InvertedResidual) for block in blocks)
    assert len(blocks[0].block) == 2  # Expansion factor 1: no 1x1 expansion
    assert [block.shortcut for block in blocks[:4]] == [True, False, True, False]


def test_residual_is_added() -> None:
    net = build(SMALL).eval()
    block = net.body.stage1[1]
    x = torch.randn(2, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), x + block.block(x))


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(MobileNet_v2, "mobilenet_v2_test_custom", {"alpha": 0.1}, 1280)


def test_bad_config() -> None:
    check_bad_config(MobileNet_v2)


def test_behaviour() -> None:
    check_staged_behaviour(SMALL, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable() -> None:
    check_scriptable(SMALL)
