"""Claim: CPU inference of our convnets is at least as fast as Birder's (and timm's where it has the model).

Batch 8, 224x224, float32, ``torch.inference_mode``; every implementation of a model carries the same fill-v1
weights (Birder's load ours strictly; timm's get the same fill rule on their own keys). Runs are interleaved
(ours, Birder, timm, ours, ...) so background load hits all of them alike; the median of each is reported.

Run: ``PYTHONPATH=. python benchmarks/forward_cnn.py`` (with birder and timm installed for the anchors).
"""

import statistics
import sys
import time
from collections.abc import Callable

import torch
from _common import REPO
from _common import importable
from _common import report

sys.path.insert(0, str(REPO / "tests"))
from conformance import fill_v1

from birder_exp.model_registry import registry

BATCH = 8
SIZE = 224
WARMUP = 1
REPEATS = 4
MODELS = {"convnext_v2_tiny": "convnextv2_tiny", "resnet_v1_50": "resnet50", "hieradet_d_small": None}


def interleaved_medians(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    with torch.inference_mode():
        for _ in range(WARMUP):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {key: [] for key in fns}
        for _ in range(REPEATS):
            for key, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)

    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    have_birder = importable("birder")
    have_timm = importable("timm")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {SIZE}x{SIZE}, float32")
    for name, timm_name in MODELS.items():
        if registry.exists(name) is False:
            print(f"{name}: not in the birder_exp catalogue yet, skipped")
            continue

        ours = registry.net_factory(name, 10, size=(SIZE, SIZE))
        fill_v1(ours)
        ours.eval()
        fns: dict[str, Callable[[], object]] = {"birder_exp": lambda net=ours: net(x)}
        if have_birder is True:
            from birder.model_registry import registry as birder_registry

            theirs = birder_registry.net_factory(name, 10, size=(SIZE, SIZE))
            theirs.load_state_dict(ours.state_dict())
            theirs.eval()
            with torch.inference_mode():
                err = (theirs(x[:1]) - ours(x[:1])).abs().max().item()
            assert err < 1e-3, f"{name}: birder_exp and Birder disagree on the same weights (max error {err:.2e})"
            fns["Birder"] = lambda net=theirs: net(x)
        if have_timm is True and timm_name is not None:
            import timm

            timm_net = timm.create_model(timm_name, pretrained=False, num_classes=10)
            fill_v1(timm_net)
            timm_net.eval()
            fns["timm"] = lambda net=timm_net: net(x)

        medians = interleaved_medians(fns)
        claim = f"{name} CPU forward (batch {BATCH}, median of {REPEATS})"
        report(claim, medians["birder_exp"], "Birder", medians.get("Birder"))
        if timm_name is not None:
            report(f"{claim} vs timm {timm_name}", medians["birder_exp"], "timm", medians.get("timm"))


if __name__ == "__main__":
    main()
