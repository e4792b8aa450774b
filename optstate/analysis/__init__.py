"""Pure functions from states to plain-data results: ``inspect`` (with its warnings and
histograms), ``diff`` and ``check`` (its findings in ``check_structure`` and
``check_hyperparams``, their types in ``check_result``). Imports the layers below ``edit``.
"""
