"""Changing checkpoints: ``set`` (``hyperparameters``; its changes planned in ``set_plan``,
written in ``set_write``) and ``convert`` (torch.save <-> DCP), each verified with the one
tree comparison (``numeric.trees``) and written atomically. Imports the layers below ``analysis``.
"""
