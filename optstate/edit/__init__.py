"""Changing checkpoints: ``set`` (hyperparameters) and ``convert`` (torch.save <-> DCP), each
verified and written atomically. Imports the layers below ``analysis``.
"""
