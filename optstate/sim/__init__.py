"""Simulating runs: run specifications from flags and config files, building real torch
optimizers and schedulers, synthetic gradients, the training loop (one process or several
with torch.distributed), comparing optimizers, and what a resume does to a saved state
(``fit``, ``trial``, schedulers' base lrs in ``schedule``). Imports the layers below.
"""
