"""slimserve: train small image classifiers, compress them, serve them.

This package holds the command-line front and the small torch-free contracts that
every stage shares (preprocessing spec, hashing, user-facing errors). The stages live
in the sibling packages ``training``, ``export``, ``service`` and ``benchmarks``.
"""

__version__ = "0.1.0"
