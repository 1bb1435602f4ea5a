"""``birder-exp rerun``: rebuilding a run from its recorded choices, reporting config and version changes, and
resuming a run killed mid-epoch to the weights of an uninterrupted run. Also how a sweep job is guarded."""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import Optional

import pytest
from omegaconf import OmegaConf
from runs_kit import birder_exp_cli
from runs_kit import cli_env
from runs_kit import explain
from runs_kit import final_digest
from runs_kit import record
from runs_kit import run_dirs
from runs_kit import tiny_args
from runs_kit import train

from birder_exp.cli.main import main as birder_exp_main


@pytest.fixture(scope="module")
def dry_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recorded dry run (network built on the meta device, no data) made with optimizer=sgd."""

    cwd = tmp_path_factory.mktemp("dry")
    done = subprocess.run(
        [sys.executable, "-m", "birder_exp.train", "model=resnet_v1_18", "optimizer=sgd", "seed=7", "dry_run=true"],
        cwd=cwd,
        env=cli_env(cwd),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, explain(done)
    [path] = run_dirs(cwd)
    return path


@pytest.fixture
def run_copy(dry_run_dir: Path, tmp_path: Path) -> Path:
    """The dry run as if optimizer=sgd had been the default then: the choice is recorded, the override is not."""

    import shutil

    path = tmp_path / "run"
    shutil.copytree(dry_run_dir, path)
    hydra_yaml = OmegaConf.load(path / ".hydra" / "hydra.yaml")
    hydra_yaml.hydra.overrides.task = [o for o in hydra_yaml.hydra.overrides.task if o != "optimizer=sgd"]
    OmegaConf.save(hydra_yaml, path / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_yaml.hydra.overrides.task)), path / ".hydra" / "overrides.yaml")
    return path


def _edit_record(path: Path, **changes: Any) -> None:
    data = json.loads((path / "run.json").read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    (path / "run.json").write_text(json.dumps(data), encoding="utf-8")


def _rerun(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = birder_exp_main(["rerun", *args])
    captured = capsys.readouterr()
    return (code, captured.out, captured.err)


@pytest.fixture
def hydra_state() -> Iterator[None]:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    saved = HydraConfig.instance().cfg
    yield
    HydraConfig.instance().cfg = saved
    GlobalHydra.instance().clear()


def test_a_rerun_pins_the_recorded_choices_and_finds_nothing_changed(
    run_copy: Path, capsys: pytest.CaptureFixture[str], hydra_state: None
) -> None:
    (code, out, _) = _rerun(capsys, str(run_copy), "--print")
    assert code == 0
    assert "config: the rebuilt config equals the recorded one" in out
    command = out.strip().splitlines()[-1]
    recorded_cwd = record(run_copy)["command"]["cwd"]
    assert command.startswith(f"cd {recorded_cwd} && ")  # Where the run started: its relative paths mean the same
    # The run used sgd although no override says so: the rerun pins the recorded choice, not today's default
    assert " optimizer=sgd " in command and " model=resnet_v1_18 " in command and " seed=7 " in command
    assert "-m birder_exp.train" in command
    assert "warning:" not in out


def test_a_rerun_reports_changed_defaults_overrides_and_versions(
    run_copy: Path, capsys: pytest.CaptureFixture[str], hydra_state: None
) -> None:
    _edit_record(run_copy, config__optimizer__lr=0.5, versions__torch="1.0.0")
    (code, out, _) = _rerun(capsys, str(run_copy), "seed=8", "--print")
    assert code == 0
    assert "config: optimizer.lr: 0.5 -> 0.1 (changed since the run)" in out
    assert "config: seed: 7 -> 8 (your override)" in out
    assert "warning: torch 1.0.0 recorded, " in out
    assert " seed=8" in out.strip().splitlines()[-1] and " seed=7 " not in out.strip().splitlines()[-1]

    (code, out, err) = _rerun(capsys, str(run_copy), "--strict")
    assert code == 2
    assert err.strip() == (
        "birder-exp rerun: 1 config values differ from the recorded run and --strict is set "
        "(pass them as overrides to accept them)"
    )
    (code, out, _) = _rerun(capsys, str(run_copy), "optimizer.lr=0.5", "--strict", "--print")
    assert code == 0
    assert "optimizer.lr: 0.5 -> 0.5" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}"], "is neither a run directory (.hydra/) nor a sweep directory (numbered job folders)"),
        (["{run}", "--job", "1"], "--job applies to a sweep directory; {run} is a single run"),
        (["{run}", "ckpt_path=last", "--print"], "{run} has no last*.ckpt to resume from"),
    ],
)
def test_rerun_refuses_bad_input_in_one_line(
    run_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hydra_state: None,
    args: list[str],
    message: str,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(tmp=empty, run=run_copy) for a in args]
    (code, _, err) = _rerun(capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert message.format(run=run_copy) in err


def _guard(tmp_path: Path, launcher: str, trainer: list[str], train_fn: Any) -> Optional[float]:
    from hydra import compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf import open_dict
    from omegaconf import read_write

    from birder_exp.configs import register_configs
    from birder_exp.runs.launch import guarded_job

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="birder_exp.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra.mode=MULTIRUN", *trainer], return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.launcher = {"_target_": launcher}
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 4
    HydraConfig.instance().set_config(cfg)
    return guarded_job(OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"]), train_fn)


def test_a_sweep_job_is_guarded(tmp_path: Path, capsys: pytest.CaptureFixture[str], hydra_state: None) -> None:
    from birder_exp.configs import ConfigError
    from birder_exp.runs.launch import BASIC_LAUNCHER
    from birder_exp.runs.record import write_record

    calls = []

    def ok(cfg: Any) -> float:
        calls.append(cfg.trainer.devices)
        return 0.5

    def broken(cfg: Any) -> float:
        raise ConfigError("data.root has no images")

    single = ["trainer=cpu"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    assert _guard(tmp_path, BASIC_LAUNCHER, single, ok) == 0.5
    # A failing job is recorded and reported; the sweep goes on (no exception)
    write_record(tmp_path, {"status": "running"})
    assert _guard(tmp_path, BASIC_LAUNCHER, single, broken) is None
    assert record(tmp_path)["status"] == "failed"
    assert record(tmp_path)["error"] == "ConfigError: data.root has no images"
    assert "birder_exp.train: job 4 failed: ConfigError: data.root has no images" in capsys.readouterr().err
    # SLURM starts one task per process: the job runs as it is
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert _guard(tmp_path, slurm, ddp, ok) == 0.5
    # A launcher that cannot give each job its own process group is refused before the job runs
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    with pytest.raises(SystemExit) as exit_info:
        _guard(tmp_path, joblib, ddp, ok)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("birder_exp.train: a sweep with a multi-process trainer (DDP/FSDP, several devices or nodes)")
    assert "cannot run under JoblibLauncher: use the default launcher" in err
    assert "hydra/launcher=submitit_slurm" in err
    assert calls == [1, 2]


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            (out, err) = process.communicate()
            raise AssertionError(
                f"the run ended before pausing (exit {process.returncode})\n{out[-3000:]}\n{err[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the run did not reach its pause within {timeout:g}s")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, runs_plugin: Path, runs_images: Path
) -> None:
    """Two epochs of 9 batches, a step checkpoint every 2 steps; the run is SIGKILLed while it waits at step 12
    (epoch 1, batch 3) and resumed with ``rerun RUN_DIR ckpt_path=last``. Training augments (random resized crops,
    flips), so the data order and every sample's draws must come back exactly."""

    def args(marker: Path) -> list[str]:
        return [
            "model=runs_tiny_a",
            *tiny_args(runs_images, epochs=2),
            "seed=5",
            "trainer.deterministic=true",
            "callbacks=resumable",
            "~callbacks.progress_bar",
            "~callbacks.model_summary",
            "callbacks.step_checkpoint.every_n_train_steps=2",
            "+callbacks.pause._target_=runs_pause.PauseAt",
            "+callbacks.pause.step=12",
            f"+callbacks.pause.marker={marker}",
            "data.augment.hflip=0.5",
            "data.augment.scale_min=0.5",
            "run_test=false",
        ]

    never = tmp_path / "never_pause"
    never.write_text("the uninterrupted run does not pause\n", encoding="utf-8")
    whole = train(args(never), tmp_path, runs_plugin)
    assert whole.returncode == 0, explain(whole)
    [uninterrupted] = run_dirs(tmp_path)

    marker = tmp_path / "paused"
    process = subprocess.Popen(
        [sys.executable, "-m", "birder_exp.train", *args(marker)],
        cwd=tmp_path,
        env=cli_env(runs_plugin),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(marker, process, timeout=300)
    process.kill()  # SIGKILL: no handler, no final checkpoint
    process.communicate()
    killed = next(p for p in run_dirs(tmp_path) if p != uninterrupted)
    assert record(killed)["status"] == "running"  # The record shows a run that never finished
    assert marker.read_text(encoding="utf-8").split()[1:] == ["1", "3"]  # Epoch 1, batch 3: mid-epoch

    resumed = birder_exp_cli(["rerun", str(killed), "ckpt_path=last"], tmp_path, runs_plugin)
    assert resumed.returncode == 0, explain(resumed)
    assert "checkpoints/steps/last.ckpt" in resumed.stdout
    [continued] = [p for p in run_dirs(tmp_path) if p not in (uninterrupted, killed)]
    assert record(continued)["config"]["ckpt_path"] == str(killed / "checkpoints" / "steps" / "last.ckpt")
    assert record(continued)["final_step"] == record(uninterrupted)["final_step"] == 18
    assert final_digest(continued) == final_digest(uninterrupted) is not None


def test_a_sweep_is_refused_before_its_first_job(capsys: pytest.CaptureFixture[str], hydra_state: None) -> None:
    from hydra import compose
    from hydra import initialize_config_module
    from omegaconf import open_dict
    from omegaconf import read_write

    from birder_exp.configs import register_configs
    from birder_exp.runs.launch import BASIC_LAUNCHER
    from birder_exp.runs.launch import check_sweep_launcher

    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    register_configs()
    with initialize_config_module(config_module="birder_exp.conf", version_base="1.3"):
        ddp = compose("train", overrides=["trainer=ddp", "trainer.devices=2"], return_hydra_config=True)
        single = compose("train", overrides=["trainer=cpu"], return_hydra_config=True)
    for cfg in (ddp, single):
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.launcher = {"_target_": local}
    check_sweep_launcher(single)  # One process per job: any launcher will do
    with pytest.raises(SystemExit) as exit_info:
        check_sweep_launcher(ddp)
    assert exit_info.value.code == 2
    assert "cannot run under LocalLauncher" in capsys.readouterr().err
    with read_write(ddp.hydra), open_dict(ddp.hydra):
        ddp.hydra.launcher = {"_target_": BASIC_LAUNCHER}
    check_sweep_launcher(ddp)  # birder_exp launches each job itself
