"""ResNet v1 (with SE and ResNet-D options): Birder-exact on every registered name, plus user-facing behaviour."""

from collections.abc import Callable

import pytest
import torch
from cnn_checks import STANDARD_CHECKS
from cnn_checks import build
from cnn_checks import check_bad_config
from cnn_checks import check_catalogue
from cnn_checks import check_custom_variant
from cnn_checks import check_fixture
from cnn_checks import check_scriptable
from cnn_checks import image
from conformance import fixture_names
from torch import nn

from birder_exp.layers import FixedGeMPool2d
from birder_exp.net.resnet_v1 import ResNet_v1

NAMES = fixture_names("resnet_v1")
SMALL = ["resnet_v1_18", "se_resnet_d_50"]
TINY_CONFIG = {"bottle_neck": True, "filter_list": [8, 16, 32, 48, 64], "units": [1, 2, 1, 1]}


@pytest.mark.parametrize("name", NAMES)
def test_birder_exact(name: str) -> None:
    check_fixture(name)


def test_catalogue() -> None:
    check_catalogue("resnet_v1", NAMES, count=23)


@pytest.mark.usefixtures("clean_registry")
def test_custom_variant() -> None:
    check_custom_variant(ResNet_v1, "resnet_v1_test_custom", {**TINY_CONFIG, "squeeze_excitation": True}, 64)


def test_bad_config() -> None:
    check_bad_config(ResNet_v1)
    with pytest.raises(ValueError, match="filter_list needs one entry more than units"):
        ResNet_v1(3, 10, config={"bottle_neck": False, "filter_list": [8, 16], "units": [1, 1]})


def test_gem_pooling() -> None:
    net = build("resnet_v1_50_c1")
    assert isinstance(net.features[0], FixedGeMPool2d)
    assert net.features[0].p == 3.0


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("check", STANDARD_CHECKS.values(), ids=STANDARD_CHECKS.keys())
def test_standard_behaviour(check: Callable[[str], None], name: str) -> None:
    check(name)


def test_return_channels() -> None:
    assert build("resnet_v1_18").return_channels == [64, 128, 256, 512]
    assert build("resnet_d_50").return_channels == [256, 512, 1024, 2048]


def test_pretrain_encoder_attributes() -> None:
    net = build("resnet_v1_18")
    assert (net.stem_stride, net.stem_width, net.max_stride, net.feature_dim) == (4, 64, 32, 512)
    assert not hasattr(net, "decoder_block")  # As in Birder: no FCMAE decoder block for ResNets


def test_no_gradient_checkpointing() -> None:
    net = ResNet_v1(3, 10, config=TINY_CONFIG)
    with pytest.raises(RuntimeError, match="does not support gradient checkpointing"):
        net.set_grad_checkpointing()


def _reference_forward(net: ResNet_v1, x: torch.Tensor) -> torch.Tensor:
    """Module by module, BatchNorm as a separate op: the computation Birder runs."""

    def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Sequential):
            for child in module:
                x = run(child, x)
            return x
        if hasattr(module, "block1"):
            out = run(module.block1, x)
            out = module.se(out)
            return torch.relu(out + run(module.block2, x))
        return module(x)

    return net.classify(net.features(run(net.body, run(net.stem, x))))


def test_batchnorm_modes() -> None:
    """Eval folds BatchNorm into the convs; frozen BatchNorm in a training net does too; train mode uses batch
    statistics and updates the running ones, exactly as unfused BatchNorm does."""

    net = build("se_resnet_d_50").eval()
    x = image()
    with torch.inference_mode():
        torch.testing.assert_close(net(x), _reference_forward(net, x), rtol=1e-4, atol=1e-5)
        # Channels-last or not, same values
        torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), net(x))

    net.train()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        frozen = net(x)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(frozen, net(x))

    net.train()
    bn = net.stem[0][1]
    before = bn.running_mean.clone()
    out = net(x)
    out.sum().backward()
    assert bn.num_batches_tracked.item() == 1
    assert not torch.equal(bn.running_mean, before)
    assert net.stem[0][0].weight.grad is not None and bn.weight.grad is not None


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The TorchScript type system:UserWarning")
def test_scriptable(name: str) -> None:
    check_scriptable(name)
