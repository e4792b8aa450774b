"""optstate's version: ``optstate.__version__``, ``optstate --version`` and the ``optstate``
record a saved simulation carries. Here, in the lowest layer, so that any module can name
it without importing the top-level package (tests/test_layers.py). pyproject.toml's
``version`` is the same string."""

__version__ = "0.1.0"
