"""Foundations every layer may use: typed errors, the one path syntax, "did you mean",
checks on plain values, the documented limits, Ctrl-C handling and the test pause hook.
Imports nothing else of optstate.
"""
