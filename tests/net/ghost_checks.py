"""Checks GhostNet v1 and v2 share (their layout is one: birder_exp.net.ghostnet_v1.GhostNetBase)."""

import torch

from birder_exp.model_registry import registry
from birder_exp.net.base import DetectorBackbone
from birder_exp.net.base import PreTrainEncoder
from birder_exp.net.base import make_divisible


def check_ghost_meta_layout(name: str) -> None:
    """Built on the meta device: Birder's stage split (stage0 plus four), widths scaled by the config's multiplier,
    and a head of 1280 whatever the width (a ghost module's last conv makes only half its channels, so the staged
    layout check does not apply)."""

    with torch.device("meta"):
        net = registry.net_factory(name, 10)
    width = registry.get_spec(name).config["width"]
    assert isinstance(net, DetectorBackbone) and not isinstance(net, PreTrainEncoder)
    assert [len(stage) for stage in net.body] == [1, 2, 2, 6, 6]
    expected = [make_divisible(c * width, 4) for c in (24, 40, 112)] + [make_divisible(960 * width, 4)]
    assert net.return_channels == expected
    for stage, channels in zip(list(net.body)[1:4], expected):
        assert stage[-1].ghost2.out_channels == channels
    assert net.body.stage4[-1][0].out_channels == net.feature_dim == expected[-1]
    assert net.features[1].out_channels == net.embedding_size == net.classifier.in_features == 1280
