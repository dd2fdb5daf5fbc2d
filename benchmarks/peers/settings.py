"""`slimserve bench peers` settings, typed once: the options are generated from these fields
(``slimserve.settings``) and the report records them. Light imports, so `--help` stays instant."""

from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.registry import PEER_NAMES
from slimserve.cli_types import int_list, positive_float, positive_int
from slimserve.settings import option


def peer_names(text: str) -> tuple[str, ...]:
    """Comma-separated peer names; unknown ones are refused by the benchmark with the list."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class BenchPeersArgs:
    bundle_dir: Path = option(
        help="bundles/NAME/VERSION (slimserve's rows also need it in the BentoML store)",
        metavar="BUNDLE_DIR",
        positional=True,
    )
    out: Path = option(Path("bench-results/peers"), help="where the report goes")
    setup_venvs: bool = option(
        False, help="first create the venvs of peers that cannot share this environment (PyTriton: numpy<2)"
    )


@dataclass(frozen=True)
class PeerBenchSettings:
    peers: tuple[str, ...] = option(PEER_NAMES, help="comma-separated peers to run", parse=peer_names)
    concurrency: tuple[int, ...] = option((1, 32), help="concurrent users to drive", parse=int_list)
    rounds: int = option(2, help="run every peer this many times", parse=positive_int)
    duration_s: float = option(
        20.0, help="seconds per peer, concurrency and round", parse=positive_float, flag="--duration"
    )
    requests: int = option(
        100_000,
        help="requests per peer, concurrency and round, whichever bound comes first (duration, as a rule)",
        parse=positive_int,
    )
    image_count: int = option(64, help="test images to cycle through", parse=positive_int)
    variant: str | None = option(None, help="variant to serve", unset="the bundle's default")
    workers: int | None = option(
        None, help="worker processes per peer", parse=positive_int, unset="one per usable core, as slimserve"
    )
    threads: int | None = option(
        None, help="ONNX Runtime threads per worker", parse=positive_int, unset="usable cores / workers"
    )
    max_batch_size: int = option(
        32, help="batched peers: images per call (slimserve's default)", parse=positive_int
    )
    batch_wait_ms: float = option(
        2.0, help="batched peers: how long to wait for company", parse=positive_float
    )
    ready_timeout_s: float = option(
        240.0,
        help="seconds a peer may take to start (Ray starts a whole cluster)",
        parse=positive_float,
        flag="--ready-timeout",
    )
