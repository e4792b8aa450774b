"""What an optimizer state is: finding it inside a container, which optimizer wrote it, the
normalized read-only view (groups, params, entries), and its plain-data description.
Imports ``base``, ``io``, ``numeric``.
"""
