"""MobileNet v1: Birder-exact on its fixtures, every name builds, and the behaviour Birder's class offers."""

import pytest
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

from birder_exp.net.mobilenet_v1 import MobileNet_v1

FIXTURES = fixture_names("mobilenet_v1")
SMALL = "mobilenet_v1_0_25"


def test_catalogue() -> None:
    check_family_catalogue("mobilenet_v1", "MobileNet_v1", 4, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("mobilenet_v1") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_widths_follow_alpha() -> None:
    net = build(SMALL)
    assert net.return_channels == [32, 64, 128, 256]
    assert (net.stem_width, net.feature_dim, net.embedding_size) == (16, 256, 256)
    assert [len(stage) for stage in net.body] == [2, 2, 6, 2]


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(MobileNet_v1, "mobilenet_v1_test_custom", {"alpha": 0.125}, 128)


def test_bad_config() -> None:
    check_bad_config(MobileNet_v1)


def test_behaviour() -> None:
    check_staged_behaviour(SMALL, frozen_stages=2)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable() -> None:
    check_scriptable(SMALL)
