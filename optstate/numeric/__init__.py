"""Statistics and comparisons of tensors: the fused torch kernels and the optional C kernel
behind one switch, exact summaries, tolerance-based comparison, leaf equality, the one
statement of float-sum tolerances. Imports ``base`` and ``io``.
"""
