"""InceptionNeXt: Birder-exact on its fixture, every name built, the Inception depthwise split, the detector and
masked pre-training interfaces."""

from typing import Any

import pytest
import torch
from cnn_checks import check_adjust_size
from cnn_checks import check_bad_config
from cnn_checks import check_custom_variant
from cnn_checks import check_scriptable
from conformance import fixture_names
from family_checks import check_birder_exact
from family_checks import check_family_listing
from family_checks import check_meta_builds_without_fixture
from family_checks import meta_build
from staged_checks import check_staged_behaviour

from birder_exp.model_registry import registry
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.inception_next import Inception_NeXt
from birder_exp.net.inception_next import InceptionDWConv2d

FAMILY = "inception_next"
TINY: dict[str, Any] = {
    "channels": [8, 16, 24, 32],
    "num_layers": [1, 1, 2, 1],
    "band_kernel_size": 5,
    "branch_ratio": 0.25,
    "drop_path_rate": 0.0,
}


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("inception_next_test_tiny", Inception_NeXt, config=TINY)
    return "inception_next_test_tiny"


@pytest.mark.parametrize("name", fixture_names(FAMILY))
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


def test_family_listing() -> None:
    check_family_listing(FAMILY, Inception_NeXt, 5)
    assert issubclass(Inception_NeXt, PreTrainEncoder)


def test_every_other_name_builds_on_meta() -> None:
    assert len(check_meta_builds_without_fixture(FAMILY)) == 4
    large = meta_build("inception_next_l")
    assert [len(stage.blocks) for stage in large.body.children()] == [3, 3, 27, 3]
    mixer = large.body.stage1.blocks[0].block[0]
    assert mixer.split_indexes == (192 - 3 * 24, 24, 24, 24) and mixer.dwconv_w.kernel_size == (1, 11)
    assert large.body.stage4.blocks[0].block[2].fc1.out_channels == 3 * 1536  # mlp_ratio 3 in the last stage


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    # cnn_checks.check_custom_variant expects a linear head; here the default is Birder's MLP head
    check_custom_variant(Inception_NeXt, "inception_next_test_custom", {**TINY, "mlp_head": False}, expected_dim=32)
    net = registry.net_factory("inception_next_test_custom", 5, config={"mlp_head": True})
    assert [type(m) for m in net.classifier] == [torch.nn.Linear, torch.nn.GELU, torch.nn.LayerNorm, torch.nn.Linear]
    assert net.classifier[0].out_features == 3 * 32 and net.classifier[3].out_features == 5


def test_mlp_head_by_default() -> None:
    net = Inception_NeXt(3, 10, config=TINY)
    assert isinstance(net.classifier, torch.nn.Sequential) and net.classifier[-1].out_features == 10


def test_bad_config() -> None:
    check_bad_config(Inception_NeXt)
    with pytest.raises(ValueError, match=r"Inception_NeXt: channels and num_layers need one entry per stage"):
        Inception_NeXt(3, 10, config={**TINY, "num_layers": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"Inception_NeXt: branch_ratio must be in \(0, 1/3\] .* got 0.5"):
        Inception_NeXt(3, 10, config={**TINY, "branch_ratio": 0.5})


def test_inception_split() -> None:
    torch.manual_seed(0)
    mixer = InceptionDWConv2d(8, square_kernel_size=3, band_kernel_size=5, branch_ratio=0.25)
    x = torch.randn(2, 8, 9, 9)
    y = mixer(x)
    assert torch.equal(y[:, :2], x[:, :2])  # Identity branch first
    torch.testing.assert_close(y[:, 2:4], mixer.dwconv_hw(x[:, 2:4]))
    torch.testing.assert_close(y[:, 4:6], mixer.dwconv_w(x[:, 4:6]))
    torch.testing.assert_close(y[:, 6:], mixer.dwconv_h(x[:, 6:]))


def test_staged_behaviour(small: str) -> None:
    check_staged_behaviour(small, frozen_stages=2, masked=True)


def test_adjust_size(small: str) -> None:
    check_adjust_size(small)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    check_scriptable(small)
