"""``hydra/sweeper=birder_exp``: Hydra requires a plugin class to live in the ``hydra_plugins`` namespace package.

The behaviour is ``birder_exp.runs.sweeper.ComposeOnceSweeper``; its config node is stored with the generated
groups (``birder_exp.configs.store``).
"""

from birder_exp.runs.sweeper import ComposeOnceSweeper


class BirderSweeper(ComposeOnceSweeper):
    """Hydra's basic sweeper that composes each job once (see ``birder_exp.runs.sweeper``)."""
