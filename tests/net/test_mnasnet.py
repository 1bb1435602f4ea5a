"""MNASNet: Birder-exact on its fixtures, every name builds, and the behaviour Birder's class offers."""

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
from torch import nn

from birder_exp.net.mnasnet import MNASNet

FIXTURES = fixture_names("mnasnet")
SMALL = "mnasnet_0_5"


def test_catalogue() -> None:
    check_family_catalogue("mnasnet", "MNASNet", 4, pretrain_encoder=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_outputs(name)


@pytest.mark.parametrize("name", [n for n in family_names("mnasnet") if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    check_meta_layout(name, pretrain_encoder=False)


def test_layout() -> None:
    net = build(SMALL)
    assert net.return_channels == [16, 24, 48, 160]
    assert (net.stem_width, net.feature_dim, net.embedding_size) == (8, 160, 1280)
    groups = [group for stage in net.body for group in stage]
    assert [len(group.layers) for group in groups] == [3, 3, 3, 2, 4, 1]
    kernels = [group.layers[0].block[1][0].kernel_size for group in groups]
    assert kernels == [(3, 3), (5, 5), (5, 5), (3, 3), (5, 5), (3, 3)]
    # TensorFlow's BatchNorm momentum everywhere, head included
    assert {m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {1 - 0.99}


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(MNASNet, "mnasnet_test_custom", {"alpha": 0.2}, 1280)


def test_bad_config() -> None:
    check_bad_config(MNASNet)


def test_behaviour() -> None:
    check_staged_behaviour(SMALL, frozen_stages=3)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable() -> None:
    check_scriptable(SMALL)
