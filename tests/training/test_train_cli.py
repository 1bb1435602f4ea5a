"""The entry point as users run it: subprocesses of `python -m birder_exp.train` (config printing, help,
completion, one-line errors, every trainer config on CPU, plugins, user scripts, the installed wheel)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_testkit import REPO
from train_testkit import cli_env
from train_testkit import last_line
from train_testkit import run_cli

from birder_exp.model_registry import registry

TINY = ["model=tiny_train_net", "data=imagefolder", "data.num_workers=0", "data.batch_size=4"]


def _imports_torch(stderr: str) -> bool:
    """From `python -X importtime` output: was any torch module imported?"""

    return any(re.search(r"\|\s+torch(\.|$)", line) for line in stderr.splitlines())


def test_cfg_job_composes_without_importing_torch(tmp_path: Path) -> None:
    name = "vit_l14_pn" if registry.exists("vit_l14_pn") else registry.list_models()[0]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "birder_exp.train", "--cfg", "job", f"model={name}"],
        check=False,
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"  name: {name}\n" in proc.stdout and "optimizer:\n  name: adamw" in proc.stdout
    assert not _imports_torch(proc.stderr)
    assert not (tmp_path / "outputs").exists()  # Printing a config starts no run


def test_model_config_overrides_reach_the_network(tmp_path: Path) -> None:
    proc = run_cli(["dry_run=true", "model=resnet_v1_18", "+model.config.filter_list=[32,32,64,128,256]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet_v1_18 at 224x224, 1000 classes: 3.06M parameters" in last_line(proc.stdout + proc.stderr)


def test_help_lists_groups_and_summarises_models(tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== Config groups (group=option) ==" in proc.stdout
    assert "  trainer: cpu, ddp, debug, default, fsdp, gpu" in proc.stdout
    assert re.search(r"  model: \d+ architectures, e.g. ", proc.stdout)
    assert registry.list_models()[-1] not in proc.stdout.split("== Config ==")[0]


def test_shell_completion_of_model_names(tmp_path: Path) -> None:
    name = registry.list_models()[0]
    for line in (f"python -m birder_exp.train model={name[:-1]}", f"birder-exp-train model={name[:-1]}"):
        proc = run_cli(["-sc", "query=bash"], tmp_path, timeout=120, COMP_LINE=line)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"model={name}" in proc.stdout.split()

    proc = run_cli(["-sc", "query=bash"], tmp_path, timeout=120, COMP_LINE="birder-exp-train optim")
    assert proc.stdout.split() == ["optimizer.", "optimizer="]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["model=vit_l14_pm"], r"unknown model 'vit_l14_pm'; closest: \S+.* \(list them: birder-exp models\)$"),
        (["pretrained=no_such_entry"], r"unknown pretrained 'no_such_entry'.*\(list them: birder-exp pretrained\)$"),
        (["-m", "model=glob(zzz*)"], r"model=glob\(zzz\*\) matches no option"),
    ],
)
def test_unknown_options_answer_in_one_line(tmp_path: Path, args: list[str], pattern: str) -> None:
    proc = run_cli(args, tmp_path, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("birder_exp.train: ") and re.search(pattern, proc.stderr.strip())


def test_model_contradicting_entry_fails_before_work(tmp_path: Path) -> None:
    entry = registry.list_pretrained_models()[0]
    network = registry.get_pretrained_metadata(entry)["net"]["network"]
    other = next(n for n in registry.list_models() if n != network)
    proc = run_cli([f"pretrained={entry}", f"model={other}"], tmp_path, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"model={other} contradicts pretrained={entry}, whose network is '{network}'" in proc.stderr
    assert not (tmp_path / "outputs").exists()


TRAINERS = {
    "cpu": [],
    "debug": [],
    "default": ["trainer.accelerator=cpu"],
    "ddp": ["trainer.accelerator=cpu", "trainer.devices=2"],
    "gpu": [],
    "fsdp": [],
}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_fast_dev_run_per_trainer_config(trainer: str, plugin_dir: Path, split_folder: Path, tmp_path: Path) -> None:
    args = [*TINY, f"data.root={split_folder}", f"trainer={trainer}", *TRAINERS[trainer], "trainer.fast_dev_run=true"]
    if trainer in ("gpu", "fsdp") and not torch.cuda.is_available():
        proc = run_cli(["--cfg", "job", *args], tmp_path, extra_path=plugin_dir, timeout=120)
        assert proc.returncode == 0 and "accelerator: gpu" in proc.stdout, proc.stderr[-3000:]
        pytest.skip(f"trainer={trainer} composes; running it needs a CUDA device")

    proc = run_cli(args, tmp_path, extra_path=plugin_dir)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    line = last_line(proc.stdout)
    assert line.startswith("birder_exp.train: tiny_train_net on imagefolder (3 classes, 16x16); test accuracy ")
    assert "goal" not in line  # A fast_dev_run proves nothing about a goal


def test_registry_architecture_trains_from_the_cli(split_folder: Path, tmp_path: Path) -> None:
    name = "resnet_v1_18" if registry.exists("resnet_v1_18") else "convnext_v1_atto"
    args = [f"model={name}", "data=imagefolder", f"data.root={split_folder}", "data.size=[32,32]", "debug=fdr"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_line(proc.stdout).startswith(f"birder_exp.train: {name} on imagefolder (3 classes, 32x32); test ")


def test_plugin_architecture_is_an_option(plugin_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(["--cfg", "job", "model=tiny_train_net_wide"], tmp_path, extra_path=plugin_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "name: tiny_train_net_wide" in proc.stdout
    proc = run_cli(["model=tiny_train_net_wide"], tmp_path, timeout=120)  # Not installed: not an option
    assert proc.returncode == 2 and "unknown model 'tiny_train_net_wide'" in proc.stderr


def test_user_script_registers_then_calls_main(tmp_path: Path) -> None:
    script = REPO / "examples" / "custom_architecture.py"
    env = cli_env()
    proc = subprocess.run(
        [sys.executable, str(script), "dry_run=true"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: rope_vit_reg4_b14_custom at 224x224, 1000 classes: 93.57M parameters" in last_line(proc.stdout)


def test_installed_wheel_ships_the_configs(tmp_path: Path) -> None:
    """A non-editable install has conf/ as birder_exp.conf and runs from any directory."""

    source = tmp_path / "src"
    skip_top = {".venv", ".git", "outputs", "multirun", "data", "models", "build", "tests", "benchmarks"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == REPO
        return {n for n in names if (top and n in skip_top) or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, source, ignore=ignore)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
    proc = subprocess.run([*pip, str(target), str(source)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (target / "birder_exp" / "conf" / "train.yaml").is_file()
    assert (target / "birder_exp" / "conf" / "trainer" / "ddp.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    code = "import birder_exp, sys; print(birder_exp.__file__); sys.argv[1:] = ['--cfg', 'job']; "
    code += "import birder_exp.train as t; t.main()"
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith(str(target))
    assert "lr_scheduler:\n  name: cosine" in proc.stdout
