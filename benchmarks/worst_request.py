"""Peak RSS of a real service worker for the worst request the limits allow.

``python -m benchmarks.worst_request --bundle NAME`` starts ``slimserve serve`` with one worker
on a loopback port, sends ``/predict/batch`` with as many RGBA images of ``max_pixels`` as
``max_request_pixels`` admits (4 of 4096x4096 by default: mostly flat PNGs, so the body stays
small while the decode is as large as allowed), reads the worker's VmRSS/VmHWM from /proc
before and after, checks that one image more is refused before decoding, and prints JSON.
"""

import argparse
import io
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
from PIL import Image

from service.config import ServeConfig
from slimserve.local_server import free_port, wait_ready

BOUNDARY = "slimserve-worst-request"


def _png(side: int) -> bytes:
    pixels = np.zeros((side, side, 4), np.uint8)
    pixels[..., 3] = 255
    pixels[::64, ::64, :3] = np.random.default_rng(0).integers(0, 255, pixels[::64, ::64, :3].shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def _multipart(png: bytes, count: int) -> bytes:
    part = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + b"\r\n"
    )
    return part * count + f"--{BOUNDARY}--\r\n".encode()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", required=True, help="a bundle registered in the BentoML store")
    args = parser.parse_args()
    limits = ServeConfig()
    side = int(limits.max_pixels**0.5)
    count = limits.max_request_pixels // (side * side)
    port = free_port()
    server = subprocess.Popen(
        ["slimserve", "serve", "--bundle", args.bundle, "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server, 240, server="slimserve serve")
        (worker,) = [
            c.pid
            for c in psutil.Process(server.pid).children(recursive=True)
            if "worker" in " ".join(c.cmdline())
        ]
        png = _png(side)
        before = _memory(worker)
        start = time.perf_counter()
        status, answer = _post(f"{url}/predict/batch", _multipart(png, count))
        seconds = time.perf_counter() - start
        time.sleep(2)
        after = _memory(worker)
        one_more, refusal = _post(f"{url}/predict/batch", _multipart(png, count + 1))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
    print(json.dumps({
        "request": f"{count} RGBA {side}x{side} PNGs, {len(png) * count} bytes of images",
        "status": status, "seconds": round(seconds, 2), "results": len(answer.get("results", [])),
        "worker_mib_before": before, "worker_mib_after": after,
        "one_image_more": {"status": one_more, "error": refusal.get("error", "")[:120]},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
