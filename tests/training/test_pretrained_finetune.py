"""`pretrained=<entry>` end to end: an entry served over HTTP on 127.0.0.1, downloaded into an isolated cache,
loaded by the PretrainedWeights callback before training (classifier reset or strict), skipped on resume."""

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from train_testkit import serve_folder

from birder_exp.model_registry import registry
from birder_exp.train import main

RGB_STATS = {"mean": [0.25, 0.5, 0.75], "std": [0.2, 0.3, 0.4]}


def _publish(folder: Path, base_url: str, entry: str, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    from birder_exp.weights import save_checkpoint

    torch.manual_seed(seed)
    net = registry.net_factory("tiny_train_net", num_classes, size=(16, 16))
    path = save_checkpoint(
        net,
        folder / f"{entry}.pt",
        format="pt",
        class_to_idx={f"c{i}": i for i in range(num_classes)},
        rgb_stats=RGB_STATS,
    )
    data = path.read_bytes()
    registry.register_weights(
        entry,
        {
            "url": base_url,
            "description": "tiny network for the fine-tune tests",
            "resolution": (16, 16),
            "formats": {"pt": {"file_size": len(data) / 2**20, "sha256": hashlib.sha256(data).hexdigest()}},
            "net": {"network": "tiny_train_net", "tag": "test"},
        },
    )
    return {k: v.clone() for k, v in net.state_dict().items()}


def _train(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Path:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["birder_exp.train", *args])
    main()
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("birder_exp.train: ")][-1]
    return Path(line.rsplit("run dir ", 1)[1])


def _args(entry: str, root: Path, *extra: str) -> list[str]:
    return [
        f"pretrained={entry}",
        "data=imagefolder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "optimizer.lr=0.0",  # Weights stay as loaded: what the checkpoint holds is what was loaded
        "callbacks.progress_bar=null",
        *extra,
    ]


@pytest.fixture
def weights_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIRDER_EXP_CACHE", str(cache))
    for name in ("BIRDER_EXP_OFFLINE", "BIRDER_EXP_BASE_URL", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return cache


def test_fine_tune_resets_classifier_then_resume_skips_weights(
    tiny_net: str,
    split_folder: Path,
    weights_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with serve_folder(served) as url:
        published = _publish(served, url, "tiny_train_net_five", num_classes=5, seed=1)
        run_dir = _train(_args("tiny_train_net_five", split_folder), tmp_path, monkeypatch, capsys)

    assert (weights_cache / "tiny_train_net_five.pt").is_file() or any(weights_cache.rglob("tiny_train_net_five.pt"))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in ("stem.0.weight", "features.0.weight", "features.0.bias"):
        assert torch.equal(state[f"net.{key}"], published[key]), key
    assert state["net.classifier.weight"].shape == (3, 16)  # Reset to the data's 3 classes
    log = (run_dir / "train.log").read_text()
    assert "Loaded pretrained weights 'tiny_train_net_five'" in log and "'mean': [0.25, 0.5, 0.75]" in log

    # Resuming: the run's own checkpoint wins; the entry is not loaded again (the server is gone)
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = _train(
        _args("tiny_train_net_five", split_folder, "trainer.max_epochs=2", f"ckpt_path={last}"),
        tmp_path,
        monkeypatch,
        capsys,
    )
    log = (resumed / "train.log").read_text()
    assert "pretrained weights of 'tiny_train_net_five' not loaded" in log
    assert "Loaded pretrained weights" not in log


def test_matching_class_count_loads_strictly(
    tiny_net: str,
    split_folder: Path,
    weights_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with serve_folder(served) as url:
        published = _publish(served, url, "tiny_train_net_three", num_classes=3, seed=2)
        run_dir = _train(_args("tiny_train_net_three", split_folder), tmp_path, monkeypatch, capsys)

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(state["net.classifier.weight"], published["classifier.weight"])
    assert torch.equal(state["net.stem.0.weight"], published["stem.0.weight"])


def test_unreachable_entry_is_one_line(
    tiny_net: str,
    split_folder: Path,
    weights_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with serve_folder(served) as url:
        _publish(served, url, "tiny_train_net_gone", num_classes=3, seed=3)
        (served / "tiny_train_net_gone.pt").unlink()  # The server answers 404
        monkeypatch.setenv("BIRDER_EXP_DOWNLOAD_RETRIES", "0")
        with pytest.raises(SystemExit) as info:
            _train(_args("tiny_train_net_gone", split_folder), tmp_path, monkeypatch, capsys)

    assert info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("birder_exp.train: pretrained=tiny_train_net_gone: ")
