"""Listing and describing never import torch: each call runs in a fresh interpreter."""

import subprocess
import sys

import pytest

CALLS = [
    "registry.list_models()",
    "registry.list_models(task=Task.OBJECT_DETECTION, include_filter='*', exclude_filter=['a*'])",
    "registry.exists('vit_l14_pn')",
    "registry.get_default_size(registry.list_models()[0]) if registry.list_models() else None",
    "registry.list_pretrained_models('*bioclip*')",
    "registry.list_pretrained_models(include_unavailable=True)",
    "registry.get_pretrained_metadata('vit_l14_pn_bioclip-v2')",
    "birder_exp.list_pretrained_models()",
]


@pytest.mark.parametrize("call", CALLS)
def test_call_does_not_import_torch(call: str) -> None:
    code = (
        "import sys, birder_exp\n"
        "from birder_exp.model_registry import Task, registry\n"
        f"{call}\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
