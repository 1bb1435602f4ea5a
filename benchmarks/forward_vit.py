"""Claim: CPU inference of our ViT is at least as fast as Birder's (and timm's ViT-B/16).

Batch 8, 224x224, float32, ``torch.inference_mode``. Ours and Birder's carry the same fill-v1 weights (Birder's
loads ours strictly, and both must agree on the output); timm's vit_base_patch16_224 gets the same fill rule on
its own keys. Runs are interleaved (ours, Birder, timm, then rotated) so background load hits all of them alike;
the median of each is reported. Ours and Birder's run the same aten op sequence on the same tensors, so their
ratio should sit at 1.0 up to noise.

Run: ``PYTHONPATH=. python benchmarks/forward_vit.py`` (with birder and timm installed for the anchors).
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
MODELS: dict[str, tuple[str | None, int]] = {  # name -> (timm anchor, timed repeats)
    "vit_b16": ("vit_base_patch16_224", 5),
    "vit_l14_pn": (None, 3),
}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    with torch.inference_mode():
        for _ in range(WARMUP):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {key: [] for key in fns}
        keys = list(fns)
        for round_idx in range(repeats):
            # Rotate who goes first, so no implementation always runs right after another's warm caches
            for key in keys[round_idx % len(keys) :] + keys[: round_idx % len(keys)]:
                start = time.perf_counter()
                fns[key]()
                times[key].append(time.perf_counter() - start)

    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    have_birder = importable("birder")
    have_timm = importable("timm")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {SIZE}x{SIZE}, float32")
    for name, (timm_name, repeats) in MODELS.items():
        if registry.exists(name) is False:
            print(f"{name}: not in the birder_exp catalogue yet, skipped")
            continue

        with torch.device("meta"):  # Random init is wasted work: the fill overwrites it
            ours = registry.net_factory(name, 10, size=(SIZE, SIZE))
        ours.to_empty(device="cpu")
        fill_v1(ours)
        ours.eval()
        fns: dict[str, Callable[[], object]] = {"birder_exp": lambda net=ours: net(x)}
        if have_birder is True:
            from birder.model_registry import registry as birder_registry

            with torch.device("meta"):
                theirs = birder_registry.net_factory(name, 10, size=(SIZE, SIZE))
            theirs.load_state_dict(ours.state_dict(), strict=True, assign=True)
            theirs.eval()
            with torch.inference_mode():
                err = (theirs(x[:1]) - ours(x[:1])).abs().max().item()
            assert err < 1e-3, f"{name}: birder_exp and Birder disagree on the same weights (max error {err:.2e})"
            fns["Birder"] = lambda net=theirs: net(x)
        if have_timm is True and timm_name is not None:
            import timm

            with torch.device("meta"):
                timm_net = timm.create_model(timm_name, pretrained=False, num_classes=10)
            timm_net.to_empty(device="cpu")
            fill_v1(timm_net)
            timm_net.eval()
            fns["timm"] = lambda net=timm_net: net(x)

        medians = interleaved_medians(fns, repeats)
        claim = f"{name} CPU forward (batch {BATCH}, median of {repeats})"
        report(claim, medians["birder_exp"], "Birder", medians.get("Birder"))
        if timm_name is not None:
            report(f"{claim} vs timm {timm_name}", medians["birder_exp"], "timm", medians.get("timm"))


if __name__ == "__main__":
    main()
