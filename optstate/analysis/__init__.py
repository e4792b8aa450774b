"""Pure functions from states to plain-data results: ``inspect`` (with its warnings and
histograms), ``diff`` and ``check``. Imports the layers below ``edit``.
"""
