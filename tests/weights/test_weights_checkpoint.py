"""Birder's checkpoint layout in pt and safetensors, and the loader's fast path against the ordinary one."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from weights_testkit import RGB_STATS
from weights_testkit import build

from birder_exp.model_registry import registry
from birder_exp.weights import CheckpointFormatError
from birder_exp.weights import CheckpointMismatchError
from birder_exp.weights import DetectionModelInfo
from birder_exp.weights import ModelInfo
from birder_exp.weights import load_model
from birder_exp.weights import save_checkpoint
from birder_exp.weights.loader import BuildPlan

CLASSES = {f"class_{i}": i for i in range(5)}


def _x(size: tuple[int, int] = (16, 16), seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(net.named_buffers())


def _slow_reference(path: Path, network: str, **kwargs: object) -> torch.nn.Module:
    """Birder's way: build normally, load_state_dict from a plain torch.load."""

    data = torch.load(path, weights_only=True)
    net = registry.net_factory(
        network, 5, 3, config=data.get("config"), size=tuple(data["signature"]["inputs"][0]["data_shape"][2:])
    )
    net.load_state_dict(data["state"])
    return net.eval()


def test_pt_layout_is_birders(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8")
    path = save_checkpoint(net, tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    data = torch.load(path, weights_only=True)
    assert set(data) == {"state", "birder_version", "task", "signature", "class_to_idx", "rgb_stats", "network"}
    assert data["task"] == "image_classification" and type(data["task"]) is str
    assert data["signature"] == {"inputs": [{"data_shape": [0, 3, 16, 16]}], "outputs": [{"data_shape": [0, 5]}]}
    assert data["class_to_idx"] == CLASSES
    assert data["network"] == "tiny_w8"
    assert list(data["state"]) == list(net.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # Written through a temporary file


def test_safetensors_header_holds_the_same_metadata_as_strings(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8")
    path = save_checkpoint(
        net, tmp_path / "a.safetensors", class_to_idx=CLASSES, rgb_stats=RGB_STATS, config={"width": 8}
    )
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        keys = set(handle.keys())
    assert all(isinstance(v, str) for v in header.values())
    assert json.loads(header["class_to_idx"]) == CLASSES
    assert json.loads(header["signature"])["outputs"] == [{"data_shape": [0, 5]}]
    assert json.loads(header["rgb_stats"]) == RGB_STATS
    assert json.loads(header["config"]) == {"width": 8}
    assert header["task"] == "image_classification" and header["network"] == "tiny_w8"
    assert keys == set(net.state_dict())


def test_pt_and_safetensors_give_identical_networks(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8", seed=3)
    pt = save_checkpoint(net, tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    st = save_checkpoint(net, tmp_path / "a.safetensors", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    (a, info_a) = load_model(pt, inference=True)
    (b, info_b) = load_model(st, inference=True)
    _same_state(a, b)
    _same_state(a, net)
    assert info_a == info_b
    x = _x()
    assert torch.equal(a(x), b(x))
    assert torch.equal(a(x), net(x))


@pytest.mark.parametrize("file_format", ["pt", "safetensors"])
def test_fast_path_equals_building_normally_and_load_state_dict(
    tmp_path: Path, weights_env: Path, file_format: str
) -> None:
    net = build("tiny_w16", seed=5)
    path = save_checkpoint(net, tmp_path / f"a.{file_format}", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    (fast, _) = load_model(path, inference=True)
    (slow, _) = load_model(path, inference=True, fast=False)
    reference = registry.net_factory("tiny_w16", 5)
    reference.load_state_dict(net.state_dict())
    reference.eval()

    for other in (slow, reference):
        _same_state(fast, other)
        buffers = _buffers(other)
        for name, tensor in _buffers(fast).items():  # Non-persistent ones included
            assert torch.equal(tensor, buffers[name]), name
    assert not any(t.is_meta for t in list(fast.parameters()) + list(fast.buffers()))
    x = _x(seed=1)
    assert torch.equal(fast(x), reference(x))
    assert torch.equal(fast(x), slow(x))


def test_mapped_parameters_train_without_touching_the_file(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8")
    path = save_checkpoint(net, tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    before = path.read_bytes()
    (loaded, _) = load_model(path)
    loaded.train()
    loaded(_x()).sum().backward()  # Gradients flow into the memory-mapped parameters
    assert loaded.stem.weight.grad is not None
    with torch.no_grad():
        for param in loaded.parameters():
            param.add_(1.0)  # Copy-on-write mapping: the file keeps its bytes
    assert path.read_bytes() == before
    assert not torch.equal(loaded.stem.weight, net.stem.weight)


def test_inference_flag(tmp_path: Path, weights_env: Path) -> None:
    path = save_checkpoint(build("tiny_w8"), tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    (trainable, _) = load_model(path)
    assert trainable.training is True and all(p.requires_grad for p in trainable.parameters())
    (frozen, _) = load_model(path, inference=True)
    assert frozen.training is False and not any(p.requires_grad for p in frozen.parameters())


def test_dtype_casts_params_and_recomputed_buffers_once(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8", seed=2)
    path = save_checkpoint(net, tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    (loaded, _) = load_model(path, dtype=torch.bfloat16, device="cpu", inference=True)
    for name, tensor in list(loaded.state_dict().items()) + list(loaded.named_buffers()):
        if tensor.is_floating_point():
            assert tensor.dtype == torch.bfloat16, name
    assert loaded.norm.num_batches_tracked.dtype == torch.int64
    reference = _slow_reference(path, "tiny_w8").to(torch.bfloat16)
    _same_state(loaded, reference)
    assert torch.equal(loaded.pos.table, reference.pos.table)


def test_new_size_adjusts_after_loading(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8", seed=4)
    path = save_checkpoint(net, tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    (loaded, info) = load_model(path, new_size=(24, 20), inference=True)
    assert loaded.size == (24, 20)
    assert loaded.pos.table.shape == (1, 8, 24, 20)
    assert info.signature["inputs"][0]["data_shape"] == [0, 3, 16, 16]  # The file's signature, as Birder returns
    reference = _slow_reference(path, "tiny_w8")
    reference.adjust_size((24, 20))
    x = _x((24, 20))
    assert torch.equal(loaded(x), reference(x))


def test_config_in_the_file_is_applied_and_reported(tmp_path: Path, weights_env: Path) -> None:
    net = registry.net_factory("tiny_w8", 5, config={"width": 12})
    path = save_checkpoint(net, tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS, config={"width": 12})
    (loaded, info) = load_model(path)
    assert isinstance(info, ModelInfo)
    assert info.custom_config == {"width": 12}
    assert loaded.stem.weight.shape[0] == 12
    (_, plain_info) = load_model(save_checkpoint(build("tiny_w8"), tmp_path / "b.pt", rgb_stats=RGB_STATS))
    assert plain_info.custom_config is None and plain_info.class_to_idx == {}


def test_a_checkpoint_for_another_architecture_fails_in_one_line(tmp_path: Path, weights_env: Path) -> None:
    path = save_checkpoint(build("tiny_w8"), tmp_path / "a.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS)
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(path, "tiny_det", backbone="tiny_w8", task="object_detection")
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit network 'tiny_det'" in message
    assert "missing keys (" in message and "unexpected keys (" in message

    expected = (
        r"0 missing keys, 0 unexpected keys, 8 shape mismatches "
        r"\(stem.weight: \[8, 3, 3, 3\] in the checkpoint, \[16, 3, 3, 3\] in the network; "
    )
    with pytest.raises(CheckpointMismatchError, match=expected) as info:
        load_model(path, "tiny_w16")
    assert "\n" not in str(info.value)


def test_missing_and_unexpected_keys_are_counted_and_named(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8")
    state = net.state_dict()
    state.pop("body.bias")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "edited.pt"
    torch.save(
        {
            "state": state,
            "birder_version": "x",
            "task": "image_classification",
            "signature": {"inputs": [{"data_shape": [0, 3, 16, 16]}], "outputs": [{"data_shape": [0, 5]}]},
            "class_to_idx": CLASSES,
            "rgb_stats": RGB_STATS,
        },
        path,
    )
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(path, "tiny_w8")
    assert str(info.value) == (
        f"checkpoint {path} does not fit network 'tiny_w8': 1 missing keys (body.bias), "
        "1 unexpected keys (extra.weight)"
    )


class _Payload:
    """Pickling this would run code on load: the loader must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle code ran",))


def test_pickle_code_never_runs(tmp_path: Path, weights_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = build("tiny_w8")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        torch.save({"state": net.state_dict(), "payload": _Payload()}, handle, pickle_module=pickle)
    with pytest.raises(CheckpointFormatError, match="refusing to run its pickle code") as info:
        load_model(path, "tiny_w8")
    assert "\n" not in str(info.value)
    assert "pickle code ran" not in capsys.readouterr().out


def test_files_that_are_not_birder_checkpoints(tmp_path: Path, weights_env: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(build("tiny_w8").state_dict(), bare)
    with pytest.raises(CheckpointFormatError, match="is not a Birder checkpoint"):
        load_model(bare, "tiny_w8")

    no_meta = tmp_path / "no_meta.pt"
    torch.save({"state": {}}, no_meta)
    with pytest.raises(CheckpointFormatError, match="it lacks signature, class_to_idx, rgb_stats"):
        load_model(no_meta, "tiny_w8")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors file"):
        load_model(garbage, "tiny_w8")

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "absent.pt", "tiny_w8")


def test_birder_files_without_a_network_name_need_one(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_w8", seed=9)
    data = torch.load(save_checkpoint(net, tmp_path / "a.pt", rgb_stats=RGB_STATS), weights_only=True)
    del data["network"]  # Birder's own files do not record it
    path = tmp_path / "birder.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointFormatError, match="does not record its network; pass network="):
        load_model(path)
    (loaded, _) = load_model(path, "tiny_w8", inference=True)
    _same_state(loaded, net)


def test_detection_builds_backbone_and_detector(tmp_path: Path, weights_env: Path) -> None:
    net = build("tiny_det", backbone="tiny_w16", seed=6)
    path = save_checkpoint(
        net, tmp_path / "det.pt", class_to_idx=CLASSES, rgb_stats=RGB_STATS, backbone_config={"width": 16}
    )
    data = torch.load(path, weights_only=True)
    assert data["task"] == "object_detection" and data["backbone"] == "tiny_w16"
    assert data["signature"]["num_labels"] == 5
    (loaded, info) = load_model(path, inference=True)
    assert isinstance(info, DetectionModelInfo)
    assert info.backbone_custom_config == {"width": 16} and info.custom_config is None
    assert type(loaded.backbone).__name__ == "tiny_w16"
    _same_state(loaded, net)
    x = _x(seed=2)
    assert torch.equal(loaded(x), net(x))


@pytest.mark.parametrize(
    ("network", "task"), [("tiny_mim", "masked_image_modeling"), ("tiny_ssl", "self_supervised_learning")]
)
def test_mim_and_ssl_checkpoints_load(tmp_path: Path, weights_env: Path, network: str, task: str) -> None:
    net = build(network, backbone="tiny_w8", seed=7)
    path = save_checkpoint(net, tmp_path / f"{network}.safetensors", rgb_stats=RGB_STATS)
    (loaded, info) = load_model(path, inference=True)
    assert isinstance(info, ModelInfo) and info.class_to_idx == {}
    assert loaded.task == task
    _same_state(loaded, net)
    x = _x(seed=3)
    out, ref = loaded(x), net(x)
    if isinstance(out, dict):
        out, ref = out["pred"], ref["pred"]
    assert torch.equal(out, ref)


def test_build_plan_reads_the_signature(weights_env: Path) -> None:
    signature = {"inputs": [{"data_shape": [0, 1, 20, 12]}], "outputs": [{"data_shape": [0, 7]}]}
    plan = BuildPlan(task="image_classification", network="tiny_w8", signature=signature)  # type: ignore[arg-type]
    net = plan.build()
    assert (plan.input_channels, plan.size, plan.num_labels) == (1, (20, 12), 7)
    assert net.stem.in_channels == 1 and net.classifier.out_features == 7 and net.size == (20, 12)
