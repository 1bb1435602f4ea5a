"""Train a local architecture alias from the command line, without editing birder_exp.

Registers USAGE.md's ``rope_vit_reg4_b14_custom`` (a RoPE ViT-B/14 with 4 registers and an attention-pool
head), then hands the command line to birder_exp's Hydra entry point, where it is a ``model=`` option like
any built-in architecture:

    python examples/custom_architecture.py data=imagefolder data.root=/data/plankton
    python examples/custom_architecture.py dry_run=true
    python examples/custom_architecture.py --cfg job

Without ``model=`` on the command line the custom architecture is chosen. For an installed package, declare
the same registration under the ``birder_exp.plugins`` entry point instead, and ``python -m birder_exp.train
model=rope_vit_reg4_b14_custom`` finds it.
"""

import sys

from birder_exp.model_registry import registry
from birder_exp.net.rope_vit import RoPE_ViT
from birder_exp.train import main

NAME = "rope_vit_reg4_b14_custom"


def register() -> None:
    registry.register_model_config(
        NAME,
        RoPE_ViT,
        config={
            "patch_size": 14,
            "num_layers": 12,
            "num_heads": 12,
            "hidden_dim": 768,
            "mlp_dim": 3072,
            "drop_path_rate": 0.15,
            "num_reg_tokens": 4,
            "attn_pool_head": True,
            "rope_temperature": 10000.0,
        },
    )


if __name__ == "__main__":
    register()
    args = sys.argv[1:]
    if not any(arg.startswith(("model=", "pretrained=")) for arg in args):
        args = [f"model={NAME}", "model.size=[224,224]", *args]
    main(args)
