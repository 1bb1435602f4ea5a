"""birder_exp's Hydra configs, installed as the package ``birder_exp.conf`` (``pkg://birder_exp.conf``)."""
