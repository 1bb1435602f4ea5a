"""Checks for Birder's fixed architectures (one name, no config): SqueezeNet, AlexNet."""

import pytest
import torch
from cnn_checks import build
from cnn_checks import image
from conformance import load_fixture

from birder_exp.model_registry import registry
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import PreTrainEncoder


def check_fixed_catalogue(name: str, net_type: type) -> None:
    """One builtin name of its family, built from the class itself, at the fixture's default size."""

    spec = registry.get_spec(name)
    assert [n for n, s in registry.specs.items() if s.family == spec.family and s.builtin] == [name]
    assert spec.config is None and spec.resolve() is net_type
    assert list(spec.default_size) == load_fixture(name)["default_size"]
    assert spec.detector_backbone is False and spec.pretrain_encoder is False
    assert not issubclass(net_type, (DetectorBackbone, PreTrainEncoder))


def check_fixed_behaviour(name: str, net_type: type) -> None:
    """No config accepted (one line naming the class); forward, embedding, classifier reset and freezing work."""

    with pytest.raises(ValueError, match=f"{net_type.__name__} is a fixed architecture and takes no config"):
        registry.net_factory(name, 10, config={"head_bias": False})

    net = build(name).eval()
    x = image()
    with torch.inference_mode():
        torch.testing.assert_close(net.classify(net.embedding(x)), net(x))
        assert net(x).shape == (2, 10)
    net.reset_classifier(3)
    with torch.inference_mode():
        assert net(x).shape == (2, 3)

    net.freeze(freeze_classifier=False)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith("classifier.")}
