"""Real training runs through the entry point, in-process (torch is already loaded): fit, test, checkpoints,
resume, load_from_checkpoint, and the one-line errors of bad data and bad keys."""

import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from birder_exp.train import main
from birder_exp.training.build import module_class
from birder_exp.training.classification import ClassificationModule

RUN_DIR = re.compile(r"outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}_[0-9a-f]{6}$")


def _args(name: str, root: Path, *extra: str) -> list[str]:
    return [
        f"model={name}",
        "data=imagefolder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        *extra,
    ]


def _main(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["birder_exp.train", *args])
    main()


def _summary(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("birder_exp.train: ")]
    assert len(lines) >= 1, text[-2000:]
    return lines[-1]


def _run_dir(summary: str) -> Path:
    path = Path(summary.rsplit("run dir ", 1)[1])
    assert RUN_DIR.search(str(path)), path
    return path


def test_fit_test_checkpoints_and_reload(
    tiny_net: str, split_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _main(_args(tiny_net, split_folder, "trainer.max_epochs=2", "optimizer.lr=0.01"), tmp_path, monkeypatch)
    summary = _summary(capsys.readouterr().out)
    assert f"birder_exp.train: {tiny_net} on imagefolder (3 classes, 16x16); test accuracy " in summary
    assert "; 2 epochs in " in summary
    run_dir = _run_dir(summary)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best_epoch") for name in checkpoints)
    metrics = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/acc" in metrics[0] and len(metrics) > 2
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    module = ClassificationModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert type(module.net).__name__ == tiny_net and module.num_classes == 3
    assert module.hparams["class_to_idx"] == {"class_0": 0, "class_1": 1, "class_2": 2}
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(module.net.stem[0].weight, state["net.stem.0.weight"])

    # Resume: the epoch counter continues from the checkpoint
    _main(
        _args(tiny_net, split_folder, "trainer.max_epochs=3", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"),
        tmp_path,
        monkeypatch,
    )
    assert "; 3 epochs in " in _summary(capsys.readouterr().out)


@pytest.mark.parametrize(
    "extra",
    [
        ["optimizer=sgd", "lr_scheduler=step", "lr_scheduler.step_epochs=1"],
        ["optimizer=lamb", "lr_scheduler=constant", "module.mixup_alpha=0.2", "module.cutmix_alpha=1.0"],
        ["module.ema.enabled=true", "module.finetune.freeze_body=true", "module.finetune.freeze_bn=true"],
        ["logger=tensorboard", "callbacks=early_stopping", "data.bad_images=skip"],
    ],
    ids=["sgd-step", "lamb-mix", "ema-frozen", "tensorboard-early-stop"],
)
def test_optional_parts_train(
    tiny_net: str,
    split_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    extra: list[str],
) -> None:
    if "logger=tensorboard" in extra:
        pytest.importorskip("tensorboard")
    _main(_args(tiny_net, split_folder, *extra), tmp_path, monkeypatch)
    summary = _summary(capsys.readouterr().out)
    assert "test accuracy" in summary
    if "logger=tensorboard" in extra:
        assert any((_run_dir(summary) / "tensorboard").iterdir())


def test_flat_folder_and_dry_run(
    tiny_net: str, flat_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _main(_args(tiny_net, flat_folder, "trainer.fast_dev_run=true"), tmp_path, monkeypatch)
    assert "test accuracy" in _summary(capsys.readouterr().out)

    _main([f"model={tiny_net}", "dry_run=true", "data.root=/does/not/matter"], tmp_path, monkeypatch)
    summary = _summary(capsys.readouterr().out)
    assert f"dry run: {tiny_net} at 16x16, 1000 classes: " in summary and "built on the meta device" in summary


def _error(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as info:
        _main(args, cwd, monkeypatch)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]
    assert line.startswith("birder_exp.train: "), err[-2000:]
    return line


def test_data_errors_are_one_line(
    tiny_net: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    line = _error(_args(tiny_net, tmp_path / "missing"), tmp_path, monkeypatch, capsys)
    assert re.search(r"data.root '.*missing' does not exist \(set data.root=<folder", line)

    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (16, 16), (index * 40, 0, 0)).save(data / name / f"{index}.png")
    (data / "empty").mkdir()
    line = _error(_args(tiny_net, data), tmp_path, monkeypatch, capsys)
    assert re.search(r"class folder '.*empty' has no images", line)

    (data / "empty").rmdir()
    (data / "a" / "bad.jpg").write_bytes(b"definitely not a jpeg")
    line = _error(_args(tiny_net, data), tmp_path, monkeypatch, capsys)
    assert "cannot decode image" in line and "bad.jpg" in line and "data.bad_images=skip" in line

    _main(_args(tiny_net, data, "data.bad_images=skip", "trainer.fast_dev_run=true"), tmp_path, monkeypatch)
    captured = capsys.readouterr()
    assert "skipped 1 undecodable images" in captured.err + captured.out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["+optimizer.betaz=1"], "optimizer.betaz is not an option of adamw (valid: lr, betas, eps, weight_decay"),
        (["optimizer.name=adamx"], "unknown optimizer 'adamx' (valid: adamw, sgd, lamb)"),
        (["+lr_scheduler.gamma=0.5"], "lr_scheduler.gamma is not an option of cosine (valid: warmup_epochs"),
        (["model.num_classes=7"], "model.num_classes=7 but data.root has 3 classes (leave it unset)"),
        (["model.size=[0,16]"], "model.size must be [height, width] of positive ints, got [0, 16]"),
    ],
)
def test_config_errors_are_one_line(
    tiny_net: str,
    split_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    expected: str,
) -> None:
    line = _error(_args(tiny_net, split_folder, *extra), tmp_path, monkeypatch, capsys)
    assert expected in line


def test_unsupported_task_is_one_line() -> None:
    from birder_exp.configs import ConfigError

    with pytest.raises(ConfigError, match=r"training 'object_detection' networks is not supported yet \(supported"):
        module_class("object_detection")
    assert module_class("image_classification") is ClassificationModule


def test_freeze_body_trains_only_the_classifier(tiny_net: str) -> None:
    module = ClassificationModule(
        model={"name": tiny_net, "size": [16, 16]},
        num_classes=4,
        optimizer={"name": "adamw", "lr": 1e-3},
        lr_scheduler={"name": "constant"},
        module={"finetune": {"freeze_body": True}},
    )
    trainable = {name for name, p in module.net.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_digits_default_data_trains_to_an_accuracy(
    tiny_net: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The embedded dataset end to end (written from scikit-learn, no network) with a tiny network."""

    pytest.importorskip("sklearn")
    args = [
        "model=tiny_train_net_wide",
        "data.size=[16,16]",
        "data.digits_upscale=2",
        "data.augment.rotation=0",
        "data.goal.test_acc=0.4",  # Chance is 10%; this two-layer network reaches about 58% in 4 epochs
        "data.goal.minutes=null",
        "trainer=cpu",
        "trainer.max_epochs=4",
        "optimizer.lr=0.01",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]
    _main(args, tmp_path, monkeypatch)
    summary = _summary(capsys.readouterr().out)
    assert "tiny_train_net_wide on digits (10 classes, 16x16); test accuracy " in summary
    assert re.search(r"; goal met \(test accuracy \d+\.\d+% >= 40%\); 4 epochs in ", summary), summary
    assert (tmp_path / "data" / "digits" / "test" / "9").is_dir()
