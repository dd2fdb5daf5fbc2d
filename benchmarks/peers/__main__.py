"""``python -m benchmarks.peers ARGS``: the same as ``slimserve bench peers ARGS``."""

import sys

from commands.main import main

sys.exit(main(["bench", "peers", *sys.argv[1:]]))
