"""Run records, sweeps, reruns and scale-out around ``python -m birder_exp.train``.

- ``record``: ``run.json`` in every run directory (command, versions, git, resolved config, weights digests)
- ``hydra_callback``: the Hydra callback that writes it, isolates sweep jobs and prints the sweep summary
- ``launch``: how a job runs (in process, or its own launch for multi-process trainers in a sweep)
- ``rundir``: reading a run back, recomposing it, comparing configs (``birder-exp rerun``)
- ``resume`` / ``callbacks``: exact mid-epoch resumption and final-weight digests (these import torch)

Nothing imported here loads torch.
"""
