"""Simulating runs: run specifications from flags and config files, building real torch
optimizers and schedulers, synthetic gradients, the training loop (one process or several
with torch.distributed), and comparing optimizers. Imports the layers below.
"""
