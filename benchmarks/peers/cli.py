"""`slimserve bench peers` (also ``python -m benchmarks.peers``): argument parsing only."""

import argparse
from pathlib import Path

from slimserve.cli_types import int_list, positive_float, positive_int

# The registry is plain data; repeated here as names so `--help` stays instant.
PEER_CHOICES = "starlette, mosec, mosec-batched, litserve, litserve-batched, pytriton, pytriton-batched, "
PEER_CHOICES += "rayserve, rayserve-batched, slimserve, slimserve-unbatched"


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _peers(args: argparse.Namespace) -> None:
    from benchmarks.peers.bench import PeerBenchSettings, bench_peers
    from benchmarks.peers.venvs import REQUIREMENTS, setup_venv

    if args.setup_venvs:
        for name in REQUIREMENTS:
            setup_venv(name)
    chosen = {"peers": args.peers} if args.peers else {}
    settings = PeerBenchSettings(
        **chosen,
        concurrency=args.concurrency,
        rounds=args.rounds,
        duration_s=args.duration,
        requests=args.requests,
        image_count=args.image_count,
        variant=args.variant,
        workers=args.workers,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        ready_timeout_s=args.ready_timeout,
    )
    bench_peers(Path(args.bundle_dir), args.out, settings)


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
    peers.add_argument(
        "bundle_dir",
        metavar="BUNDLE_DIR",
        help="bundles/NAME/VERSION (also in the BentoML store for slimserve)",
    )
    peers.add_argument(
        "--peers", type=_names, help=f"comma-separated subset (default: all of {PEER_CHOICES})"
    )
    peers.add_argument("--concurrency", type=int_list, default=(1, 32), help="default: 1,32")
    peers.add_argument("--rounds", type=positive_int, default=2, help="every peer this many times (2)")
    peers.add_argument(
        "--duration", type=positive_float, default=20.0, help="seconds per peer, concurrency and round (20)"
    )
    peers.add_argument(
        "--requests", type=positive_int, default=3000, help="requests per peer, concurrency and round (3000)"
    )
    peers.add_argument(
        "--image-count", type=positive_int, default=64, help="test images to cycle through (64)"
    )
    peers.add_argument("--variant", help="variant to serve (default: the bundle's default)")
    peers.add_argument(
        "--workers", type=positive_int, help="worker processes per peer (default: one per core)"
    )
    peers.add_argument("--threads", type=positive_int, help="ONNX Runtime threads per worker (cores/workers)")
    peers.add_argument(
        "--max-batch-size", type=positive_int, default=32, help="batched peers: images per call (32)"
    )
    peers.add_argument(
        "--batch-wait-ms", type=positive_float, default=2.0, help="batched peers: wait for company (2 ms)"
    )
    peers.add_argument(
        "--ready-timeout", type=positive_float, default=240.0, help="seconds a peer may take to start (240)"
    )
    peers.add_argument(
        "--setup-venvs",
        action="store_true",
        help="first create the venvs of peers that cannot share this environment (PyTriton pins numpy<2)",
    )
    peers.add_argument(
        "--out", type=Path, default=Path("bench-results/peers"), help="default: ./bench-results/peers"
    )
    peers.set_defaults(handler=_peers)
