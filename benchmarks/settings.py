"""Benchmark settings, typed once: `slimserve bench models|http` options are generated from
these fields (``slimserve.settings``) and the reports record them. Torch- and numpy-free,
so `--help` stays instant; a new benchmark option is a new field here.
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from slimserve.cli_types import int_list, non_negative_int, positive_float, positive_int
from slimserve.settings import internal, option

# The recommendation's batch size when --select-batch is not given and the matrix has it.
PREFERRED_SELECT_BATCH = 64


def width_by_height(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. ``4000x3000``), both positive."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 4000x3000, got {text!r}")
    return int(width), int(height)


def route(text: str) -> str:
    """A path on the service such as ``/predict``."""
    if not text.startswith("/") or "?" in text or "#" in text:
        raise argparse.ArgumentTypeError(f"expected a route such as /predict, got {text!r}")
    return text


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class ModelBenchSettings:
    batch_sizes: tuple[int, ...] = option((1, 8, 32, 64, 128), help="batch sizes to time", parse=int_list)
    threads: int = option(
        help="intra-op threads for every runtime",
        parse=positive_int,
        unset="every usable core",
        default_factory=usable_cores,
    )
    warmup: int = option(10, help="untimed calls per batch size", parse=positive_int)
    repeats: int = option(100, help="timed calls per batch size", parse=positive_int)
    max_seconds: float = option(
        20.0, help="time bound per batch size and block, after warm-up", parse=positive_float
    )
    limit: int | None = option(
        None,
        help="re-evaluate accuracy on N test images per runtime",
        parse=positive_int,
        unset="use export's figures",
    )
    ort_spinning: bool = option(
        True, help="ONNX Runtime intra-op thread spinning (its default; each runtime has its own process)"
    )
    max_accuracy_drop: float = option(
        0.5, help="budget in points for the recommendation", parse=positive_float
    )
    # None resolves to PREFERRED_SELECT_BATCH when timed, else the largest batch size.
    select_batch: int | None = option(
        None,
        help="batch size the recommendation and the accuracy plot use",
        parse=positive_int,
        unset=f"{PREFERRED_SELECT_BATCH} or the largest",
    )
    clock_ghz: float | None = option(
        None,
        help="core clock for the peak (VMs show the nominal clock)",
        parse=positive_float,
        unset="what the kernel reports",
    )
    # "retain": every worker keeps freed memory (slimserve.allocator); "default": the C
    # library's own policy, which page-faults PyTorch's activations back in on every call.
    malloc: str = option(
        "retain",
        help="allocator policy in every worker: retain freed memory (PyTorch eager fp32 is up to 1.75x "
        "faster with it) or the C library's default, to reproduce an untuned process",
        choices=("retain", "default"),
    )
    # The whole matrix runs this many times in a row; each cell reports the median round
    # and each ratio its median and range over rounds, each round's ratio against the
    # same round's reference (cells drift by up to 30% over minutes on a shared VM).
    rounds: int = option(
        3,
        help="run the whole matrix this many times; cells report the median round and each speed-up "
        "its range over rounds (single cells drift by up to 30% on shared machines)",
        parse=positive_int,
    )

    def __post_init__(self) -> None:
        if self.select_batch is None:
            preferred = PREFERRED_SELECT_BATCH in self.batch_sizes
            object.__setattr__(
                self, "select_batch", PREFERRED_SELECT_BATCH if preferred else max(self.batch_sizes)
            )


@dataclass(frozen=True)
class HttpBenchSettings:
    concurrency: tuple[int, ...] = option((1, 8, 32, 64), help="concurrent users to drive", parse=int_list)
    duration_s: float = option(
        20.0, help="seconds per target and concurrency", parse=positive_float, flag="--duration"
    )
    requests: int = option(
        3000,
        help="requests per target and concurrency, whichever bound comes first",
        parse=positive_int,
    )
    images_dir: Path | None = option(
        None, help="folder of image files to send", flag="--images", unset="real test images"
    )
    image_count: int = option(64, help="images to cycle through", parse=positive_int)
    image_size: tuple[int, int] | None = option(
        None,
        help="re-encode each image at WxH (JPEG, quality 90), e.g. 4000x3000 for a 12 MP phone photo",
        parse=width_by_height,
        metavar="WxH",
        unset="the files as they are",
    )
    variant: str | None = option(None, help="variant to request", unset="the service's default")
    adaptive_path: str = internal("/predict")
    unbatched_path: str = internal("/predict/unbatched")
    reference: bool = option(
        True, help="also start and measure the bare Starlette+uvicorn reference endpoint"
    )
    bundle_dir: Path | None = option(
        None, help="bundle folder for the reference", flag="--bundle", unset="the BentoML store entry"
    )
    in_process_repeats: int = option(
        300, help="timed in-process batch-1 calls for the comparison (0 skips it)", parse=non_negative_int
    )


@dataclass(frozen=True)
class BurstBenchSettings:
    """`slimserve bench burst`: keep-alive connections opened at once (benchmarks.connection_burst)."""

    connections: int = option(32, help="kept-alive connections opened at once", parse=positive_int)
    duration_s: float = option(10.0, help="seconds per run", parse=positive_float, flag="--duration")
    runs: int = option(
        4, help="bursts, each on fresh connections (a new draw of the split)", parse=positive_int
    )
    path: str = option("/predict", help="route to post to", parse=route)
