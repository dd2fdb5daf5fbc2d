"""slimserve: train small image classifiers, compress them, serve them.

This package holds the small torch-free contracts every stage shares (preprocessing spec,
manifest, hashing, user-facing errors, the settings-to-CLI generator) and imports none of
them. The stages live in the sibling packages ``training``, ``export``, ``service`` and
``benchmarks``; ``commands`` is the ``slimserve`` command that wires them together.
"""

__version__ = "0.1.0"
