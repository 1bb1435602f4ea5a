"""The console command, run for real in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "birder-exp"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, check=False, env=env)


def test_models_json_matches_registry() -> None:
    from birder_exp.model_registry import registry

    result = run("models", "--json")
    assert result.returncode == 0, result.stderr
    listed = [row["name"] for row in json.loads(result.stdout)]
    assert listed == registry.list_models()


def test_models_table_and_filters() -> None:
    from birder_exp.model_registry import registry

    names = registry.list_models()
    if len(names) == 0:
        pytest.skip("no family listed yet")
    first = names[0]
    result = run("models", "--filter", first, "--exclude", "zzz*")
    assert result.returncode == 0, result.stderr
    assert "1 architectures" in result.stdout and first in result.stdout


def test_pretrained_all_marks_unloadable() -> None:
    result = run("pretrained", "--all", "--json", "--filter", "*bioclip*")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["vit_b16_pn_bioclip-v1", "vit_h14_pn_bioclip-v25", "vit_l14_pn_bioclip-v2"]
    from birder_exp.model_registry import registry

    for row in rows:
        assert row["loadable"] == (registry.missing_networks(row["name"]) == [])

    table = run("pretrained", "--all", "--filter", "*bioclip*")
    assert table.returncode == 0 and "vit_l14_pn_bioclip-v2" in table.stdout


def test_pretrained_task_filter() -> None:
    result = run("pretrained", "--all", "--json", "--task", "object_detection")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 5


def test_show_entry() -> None:
    result = run("show", "vit_l14_pn_bioclip-v2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kind"] == "pretrained entry"
    assert data["net"] == {"network": "vit_l14_pn", "tag": "bioclip-v2"}
    assert data["resolution"] == [224, 224]
    table = run("show", "vit_l14_pn_bioclip-v2")
    assert "Imageomics" in table.stdout


def test_show_unknown_name_is_one_line_with_close_matches() -> None:
    result = run("show", "vit_l14_pn_bioclip-v3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("birder-exp show: unknown architecture or pretrained entry 'vit_l14_pn_bioclip-v3'")
    assert "vit_l14_pn_bioclip-v2" in lines[0]


def test_bad_task_is_rejected_by_the_parser() -> None:
    result = run("models", "--task", "detection")
    assert result.returncode == 2
    assert "invalid choice: 'detection'" in result.stderr


def test_cli_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from birder_exp.cli.main import main\n"
        "main(['models', '--json']); main(['pretrained', '--all', '--json']); main(['show', 'vit_l14_pn_bioclip-v2'])\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
