"""HorNet: Birder-exact on its fixture, every name built, g^n-Conv and global filters, the detector interfaces."""

from typing import Any

import pytest
import torch
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_loads_into
from conformance import fixture_names
from family_checks import check_birder_exact
from staged_checks import check_family_catalogue
from staged_checks import check_freeze
from staged_checks import check_freeze_stages
from staged_checks import check_no_grad_checkpointing
from staged_checks import family_names

from birder_exp.model_registry import registry
from birder_exp.net.hornet import GlobalLocalFilter
from birder_exp.net.hornet import HorNet
from birder_exp.net.hornet import gnConv

FAMILY = "hornet"
FIXTURES = fixture_names(FAMILY)
TINY: dict[str, Any] = {
    "depths": [1, 1, 2, 1],
    "base_dim": 8,
    "gf_layer": [False, False, True, True],
    "drop_path_rate": 0.1,
}
SIZE = (64, 64)


@pytest.fixture
def small(clean_registry: None) -> str:
    registry.register_model_config("hornet_test_tiny", HorNet, config=TINY)
    return "hornet_test_tiny"


def x_image(size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))


def test_catalogue() -> None:
    names = check_family_catalogue(FAMILY, "HorNet", 8, pretrain_encoder=False)
    assert sum(name.endswith("_gf") for name in names) == 4


@pytest.mark.parametrize("name", FIXTURES)
def test_birder_exact(name: str) -> None:
    check_birder_exact(name)


@pytest.mark.parametrize("name", [n for n in family_names(FAMILY) if n not in FIXTURES])
def test_meta_layout(name: str) -> None:
    with torch.device("meta"):
        net = registry.net_factory(name, 10)

    base_dim = registry.get_spec(name).config["base_dim"]
    assert net.return_channels == [base_dim * 2**i for i in range(4)] and net.embedding_size == 8 * base_dim
    assert net.classifier.in_features == net.embedding_size
    filters = [m for m in net.modules() if isinstance(m, GlobalLocalFilter)]
    if name.endswith("_gf"):
        assert len(filters) == 20  # Every block of stages 3 and 4
        assert filters[0].complex_weight.shape == (sum(base_dim * 4 // 2**i for i in range(4)) // 2, 14, 8, 2)
        assert filters[-1].complex_weight.shape[1:] == (7, 4, 2)
    else:
        assert filters == []


def test_gn_conv_orders() -> None:
    conv = gnConv(16, order=3, gf_layer=False, h=0, w=0, scale=1.0 / 3.0)
    assert conv.dims == [4, 8, 16] and conv.proj_in.out_channels == 32 and conv.dwconv.in_channels == 28
    assert [pw.out_channels for pw in conv.pws] == [8, 16]
    assert conv(torch.randn(1, 16, 5, 5)).shape == (1, 16, 5, 5)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    registry.register_model_config("hornet_test_custom", HorNet, config=TINY)
    net = registry.net_factory("hornet_test_custom", 5, size=SIZE).eval()
    with torch.inference_mode():
        assert net(x_image()).shape == (2, 5)
    assert net.embedding_size == 64


def test_bad_config() -> None:
    check_bad_config(HorNet)
    with pytest.raises(ValueError, match=r"need 4 entries each \(one per stage\), got 3 and 4"):
        HorNet(3, 10, config={**TINY, "depths": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"base_dim must be even \(g\^n-Conv halves it\), got 7"):
        HorNet(3, 10, config={**TINY, "base_dim": 7})
    with pytest.raises(ValueError, match="takes square inputs only"):
        HorNet(3, 10, config=TINY, size=(64, 96))


def test_detection_features(small: str) -> None:
    net = registry.net_factory(small, 10, size=SIZE).eval()
    x = x_image()
    with torch.inference_mode():
        stages = net.detection_features(x)
        assert [out.shape[1:] for out in stages.values()] == [(8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)]
        torch.testing.assert_close(stages["stage4"], net.forward_features(x))


def test_adjust_size_resamples_filters(small: str) -> None:
    """A net built at 64 and adjusted to 96 has the filter shapes of one built at 96, and the weights load."""

    net = registry.net_factory(small, 10, size=SIZE).eval()
    net.adjust_size((96, 96))
    fresh = registry.net_factory(small, 10, size=(96, 96)).eval()
    check_loads_into(net, fresh, x_image((96, 96)))
    with pytest.raises(ValueError, match="takes square inputs only"):
        net.adjust_size((96, 128))
    with pytest.raises(ValueError, match="does not support dynamic size"):
        net.set_dynamic_size()


def test_freeze_and_checkpointing(small: str) -> None:
    check_freeze(small)
    check_freeze_stages(small, 2)
    check_no_grad_checkpointing(small)
    assert build(small).size == (224, 224)  # The default size: square


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(small: str) -> None:
    """The global filters (FFT) script too; the scripted net gives the eager output."""

    net = registry.net_factory(small, 10, size=SIZE).eval()
    scripted = torch.jit.script(net)
    x = x_image()
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), net(x))
