"""GRPO training of a student with verl: Hydra overrides and launch scripts.

* :mod:`r2i.train.overrides` turns the ``train`` config section into verl ``main_ppo`` Hydra
  override strings (verl 0.9 key names, checked against verl's real config tree in the tests).
* :mod:`r2i.train.launch` checks for GPUs and generates the single-node command and the
  multi-node (Ray inside a SLURM allocation) script; ``python -m r2i.train.launch --dry-run``
  prints them.

Nothing here imports verl, Ray or torch at import time, so the module is usable (and tested)
on machines without GPUs.
"""

from r2i.train.overrides import batch_sizes, build_overrides, hydra_value

__all__ = ["batch_sizes", "build_overrides", "hydra_value"]
