"""``python -m benchmarks.peers ARGS``: the same as ``slimserve bench peers ARGS``."""

import sys

from slimserve.cli import main

sys.exit(main(["bench", "peers", *sys.argv[1:]]))
