"""The one console every command prints its tables and progress to."""

import os
import sys

from rich.console import Console

# Rich assumes 80 columns when output is not a terminal and then cuts table cells, numbers
# included, to "1,10…": a log or CI transcript would lose the figures it exists to keep.
PIPED_WIDTH = 200


def cli_console() -> Console:
    """A terminal's own width; piped or redirected output gets room for whole tables
    (``COLUMNS`` still wins when set)."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=PIPED_WIDTH)
