"""`slimserve bench peers` (also ``python -m benchmarks.peers``): argument parsing only.

The options are generated from ``benchmarks.peers.settings``; heavy imports on use.
"""

import argparse

from benchmarks.peers.settings import BenchPeersArgs, PeerBenchSettings
from slimserve.settings import add_options, build


def _peers(args: argparse.Namespace) -> None:
    from benchmarks.peers.bench import bench_peers
    from benchmarks.peers.venvs import REQUIREMENTS, setup_venv

    job = build(BenchPeersArgs, args)
    if job.setup_venvs:
        for name in REQUIREMENTS:
            setup_venv(name)
    bench_peers(job.bundle_dir, job.out, build(PeerBenchSettings, args))


def add_parser(sub: argparse._SubParsersAction) -> None:
    peers = sub.add_parser(
        "peers",
        help="serve the bundle's variant with mosec, LitServe, PyTriton, Ray Serve, bare Starlette and "
        "slimserve, and load-test each the same way",
        description="Start each peer framework on a loopback port serving the same variant with the same "
        "per-request work (decode + preprocess from service.preprocess, ONNX Runtime CPU, top-5 JSON), "
        "drive it with the same locust load as 'bench http', one server at a time, and write a table, JSON "
        "and a plot. Needs the frameworks: pip install -e '.[peers]' (PyTriton: --setup-venvs).",
    )
    add_options(peers, BenchPeersArgs)
    add_options(peers, PeerBenchSettings)
    peers.set_defaults(handler=_peers)
