"""load_pretrained_model end to end: the published catalogue, user entries, Hugging Face URLs, formats."""

import hashlib
from pathlib import Path

import pytest
import torch
from tiny_weights_nets import TinyClassifier
from weights_testkit import WeightsServer
from weights_testkit import publish

import birder_exp
from birder_exp.model_registry import UnknownNameError
from birder_exp.model_registry import registry
from birder_exp.weights import DetectionModelInfo
from birder_exp.weights import DownloadError
from birder_exp.weights import ModelInfo
from birder_exp.weights import NetworkUnavailableError
from birder_exp.weights import UnsupportedFormatError
from birder_exp.weights import VerificationError
from birder_exp.weights.cache import marker_path
from birder_exp.weights.fetch import HfLocation
from birder_exp.weights.fetch import parse_hf_url


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_the_published_catalogue_is_package_data() -> None:
    everything = registry.list_pretrained_models(include_unavailable=True)
    assert len(everything) == 221
    loadable = set(registry.list_pretrained_models())
    assert loadable == {n for n in everything if registry.missing_networks(n) == []}
    meta = registry.get_pretrained_metadata("vit_l14_pn_bioclip-v2")
    assert meta["url"] == "https://huggingface.co/birder-project/vit_l14_pn_bioclip-v2/resolve/main"
    assert parse_hf_url(meta["url"]) == HfLocation("birder-project/vit_l14_pn_bioclip-v2", "main")


def test_an_entry_whose_network_is_missing_says_which(weights_env: Path) -> None:
    unavailable = [n for n in registry.list_pretrained_models(include_unavailable=True) if registry.missing_networks(n)]
    if len(unavailable) == 0:
        pytest.skip("every published network can be built")
    name = unavailable[0]
    missing = registry.missing_networks(name)
    with pytest.raises(NetworkUnavailableError) as error:
        birder_exp.load_pretrained_model(name, progress_bar=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"pretrained entry '{name}' needs network")
    assert all(f"'{m}'" in message for m in missing)
    assert list(weights_env.parent.iterdir()) == []  # Nothing was fetched


def test_unknown_entries_suggest_close_names(weights_env: Path) -> None:
    with pytest.raises(UnknownNameError, match="closest: vit_l14_pn_bioclip-v2"):
        birder_exp.load_pretrained_model("vit_l14_pn_bioclip-v3", progress_bar=False)


def test_formats_the_entry_lacks_or_birder_exp_cannot_load(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    publish(server, tmp_path / "src", "tiny_fmt")
    with pytest.raises(
        UnsupportedFormatError, match=r"^pretrained entry 'tiny_fmt' has no 'safetensors' file \(available: pt\)$"
    ):
        birder_exp.load_pretrained_model("tiny_fmt", file_format="safetensors", progress_bar=False)
    with pytest.raises(
        UnsupportedFormatError, match=r"loads pt and safetensors files, not 'pts' \(entry 'tiny_fmt' publishes: pt\)"
    ):
        birder_exp.load_pretrained_model("tiny_fmt", file_format="pts", progress_bar=False)


def test_a_user_registered_entry_loads_like_a_built_in_one(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    """USAGE.md's "Your own weight entry", with the url pointing at the test server."""

    src = publish(server, tmp_path / "src", "rope_vit_reg4_b14_custom_plankton", register=False, seed=11)
    registry.register_model_config("rope_vit_reg4_b14_custom", TinyClassifier, config={"width": 8})
    registry.register_weights(
        "rope_vit_reg4_b14_custom_plankton",
        {
            "url": f"{server.url}/models",
            "description": "Custom RoPE ViT model trained on a plankton dataset",
            "resolution": (16, 16),
            "formats": {"pt": {"file_size": 0.1, "sha256": src.sha256}},
            "net": {"network": "rope_vit_reg4_b14_custom", "tag": "plankton"},
        },
    )
    assert "rope_vit_reg4_b14_custom_plankton" in registry.list_pretrained_models("*plankton*")
    (net, model_info) = birder_exp.load_pretrained_model("rope_vit_reg4_b14_custom_plankton", inference=True)
    assert type(net).__name__ == "rope_vit_reg4_b14_custom"
    assert net.training is False
    assert isinstance(model_info, ModelInfo)
    assert model_info.class_to_idx == {f"class_{i}": i for i in range(5)}
    assert torch.equal(net(_x()), src.net(_x()))
    assert (weights_env / "rope_vit_reg4_b14_custom_plankton.pt").read_bytes() == src.data


def test_safetensors_and_pt_entries_give_identical_networks(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    pt = publish(server, tmp_path / "src", "tiny_two", seed=21, register=False)
    st = publish(server, tmp_path / "src", "tiny_two", seed=21, file_format="safetensors", register=False)
    registry.register_weights(
        "tiny_two",
        {
            "url": f"{server.url}/models",
            "description": "both formats",
            "resolution": (16, 16),
            "formats": {
                "pt": {"file_size": 0.1, "sha256": pt.sha256},
                "safetensors": {"file_size": 0.1, "sha256": st.sha256},
            },
            "net": {"network": "tiny_w8"},
        },
    )
    (a, info_a) = birder_exp.load_pretrained_model("tiny_two", inference=True, progress_bar=False)
    (b, info_b) = birder_exp.load_pretrained_model(
        "tiny_two", file_format="safetensors", inference=True, progress_bar=False
    )
    assert info_a == info_b
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a(_x()), b(_x()))


def test_options_apply_as_in_birder(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    publish(server, tmp_path / "src", "tiny_opts", network="tiny_w16", seed=3)
    (net, _) = birder_exp.load_pretrained_model(
        "tiny_opts", dtype=torch.float16, device=torch.device("cpu"), new_size=(20, 20), progress_bar=False
    )
    assert net.size == (20, 20) and net.pos.table.shape[-2:] == (20, 20)
    assert {p.dtype for p in net.parameters()} == {torch.float16}
    assert net.training is True and all(p.requires_grad for p in net.parameters())

    (wider, info) = birder_exp.load_pretrained_model(
        "tiny_opts", custom_config={"width": 16}, inference=True, progress_bar=False
    )
    assert wider.config == {"width": 16} and info.custom_config is None  # Birder reports the file's config


def test_detection_mim_and_ssl_entries(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    det = publish(server, tmp_path / "src", "tiny_det_coco", network="tiny_det", backbone="tiny_w8", seed=1)
    assert "backbone" in registry.get_pretrained_metadata("tiny_det_coco")
    (net, info) = birder_exp.load_pretrained_model("tiny_det_coco", inference=True, progress_bar=False)
    assert isinstance(info, DetectionModelInfo) and info.backbone_custom_config is None
    assert torch.equal(net(_x()), det.net(_x()))

    for network in ("tiny_mim", "tiny_ssl"):
        src = publish(server, tmp_path / "src", f"{network}_pre", network=network, backbone="tiny_w8", seed=2)
        assert registry.get_pretrained_metadata(f"{network}_pre")["encoder"] == {"network": "tiny_w8"}
        (net, info) = birder_exp.load_pretrained_model(f"{network}_pre", inference=True, progress_bar=False)
        assert isinstance(info, ModelInfo)
        for (ka, va), (kb, vb) in zip(net.state_dict().items(), src.net.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)


# Hugging Face URLs go through huggingface_hub, here pointed at the test server


@pytest.fixture
def fake_hub(tmp_path: Path, server: WeightsServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    hub_cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub_cache


def _hf_entry(tmp_path: Path, server: WeightsServer, name: str, seed: int = 0) -> tuple[bytes, str]:
    src = publish(server, tmp_path / "src", name, register=False, seed=seed)
    server.add(f"/test-org/{name}/resolve/main/{name}.pt", src.data)
    registry.register_weights(
        name,
        {
            "url": f"https://huggingface.co/test-org/{name}/resolve/main",
            "description": "on the hub",
            "resolution": (16, 16),
            "formats": {"pt": {"file_size": 0.1, "sha256": src.sha256}},
            "net": {"network": "tiny_w8"},
        },
    )
    return (src.data, src.sha256)


def test_hugging_face_entries_use_the_hub_cache(
    tmp_path: Path, weights_env: Path, server: WeightsServer, fake_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data, _) = _hf_entry(tmp_path, server, "tiny_hf")
    file_path = "/test-org/tiny_hf/resolve/main/tiny_hf.pt"
    (net, _) = birder_exp.load_pretrained_model("tiny_hf", progress_bar=False)
    assert server.gets[file_path] == 1
    stored = list(fake_hub.rglob("tiny_hf.pt"))
    assert len(stored) == 1 and stored[0].read_bytes() == data  # In the hub's cache, not a second copy
    assert not (weights_env / "tiny_hf.pt").exists() and marker_path(weights_env / "tiny_hf.pt").exists()

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    server.files.clear()
    (again, _) = birder_exp.load_pretrained_model("tiny_hf", progress_bar=False)  # Marker hit: no hub call
    assert torch.equal(again.stem.weight, net.stem.weight)
    assert sum(server.heads.values()) <= 1 and server.gets[file_path] == 1

    dst = tmp_path / "mine.pt"
    birder_exp.download_weights("tiny_hf", dst=dst, progress_bar=False)  # From the hub cache, offline
    assert dst.read_bytes() == data


def test_hugging_face_offline_without_the_file(
    tmp_path: Path, weights_env: Path, server: WeightsServer, fake_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    _hf_entry(tmp_path, server, "tiny_hf_off")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match=r"tiny_hf_off.pt is not in the Hugging Face cache and offline mode is on"):
        birder_exp.download_weights("tiny_hf_off", progress_bar=False)
    assert sum(server.gets.values()) == 0


def test_hugging_face_bytes_that_do_not_match_are_removed(
    tmp_path: Path, weights_env: Path, server: WeightsServer, fake_hub: Path
) -> None:
    (data, sha) = _hf_entry(tmp_path, server, "tiny_hf_bad")
    wrong = bytes(b ^ 0x5A for b in data)
    server.add("/test-org/tiny_hf_bad/resolve/main/tiny_hf_bad.pt", wrong)
    with pytest.raises(VerificationError) as error:
        birder_exp.download_weights("tiny_hf_bad", progress_bar=False)
    assert f"expected {sha}, got {hashlib.sha256(wrong).hexdigest()}" in str(error.value)
    assert [p for p in fake_hub.rglob("*") if p.is_file() and p.read_bytes() == wrong] == []
    assert not marker_path(weights_env / "tiny_hf_bad.pt").exists()

    server.add("/test-org/tiny_hf_bad/resolve/main/tiny_hf_bad.pt", b"")
    server.files.pop("/test-org/tiny_hf_bad/resolve/main/tiny_hf_bad.pt")
    with pytest.raises(DownloadError, match=r"^entry 'tiny_hf_bad' \(pt\): ") as error:
        birder_exp.download_weights("tiny_hf_bad", progress_bar=False)
    assert "\n" not in str(error.value)
