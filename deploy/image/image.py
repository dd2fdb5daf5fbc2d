"""Build slimserve's OCI image and run it, with buildah and podman instead of a Docker daemon.

``make image`` runs this end to end: a Debian base image built from Debian packages
(Docker Hub is out of reach, so BentoML's default ``python:3.11-slim`` cannot be pulled),
the Bento built from the checkout and the model store, ``bentoml containerize --backend
buildah`` on top of that base, then the image started with podman, ``/readyz`` awaited, a
real PNG posted and the answer compared with the source service's own loader. It prints a
JSON report (image size, build and ready times) and exits non-zero when anything differs.

Podman and buildah read a private ``containers.conf`` and ``storage.conf`` under
``$SLIMSERVE_IMAGE_HOME`` (default ``~/.cache/slimserve/image``) through
``CONTAINERS_CONF`` / ``CONTAINERS_STORAGE_CONF``, so the host's own settings and image
store are left alone. The settings are what these machines need: runc instead of crun and
no default rlimits (crun refuses this host's hybrid cgroups and its rlimits).
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the source service to compare with is this checkout's

from slimserve.errors import SlimserveError  # noqa: E402

# The base image the Bento names; its tag is the Debian release it is built from (bookworm,
# what these machines run: python3 3.11 as the Bento pins, glibc 2.36 >= onnxruntime's 2.28).
BASE_IMAGE = yaml.safe_load((REPO / "bentofile.yaml").read_text())["docker"]["base_image"]
RELEASE = BASE_IMAGE.rpartition(":")[2]
BASE_PACKAGES = ["python3", "python3-pip", "ca-certificates"]
# BentoML's Dockerfile pip-installs uv into the base's Python: in a container image that
# Python is ours alone, so Debian's externally-managed guard is lifted. uv reads the CA
# bundle from SSL_CERT_FILE (it does not use the system store by default).
BASE_CHANGES = ["ENV PIP_BREAK_SYSTEM_PACKAGES=1", "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]
# The host's CA bundle, mounted during the build only: the package index is reached
# through this network's TLS proxy, whose CA the image must not carry.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS = ("buildah", "podman", "mmdebstrap", "runc")
INSTALL = "sudo apt-get update && sudo apt-get install -y " + " ".join(TOOLS)
TORCH_SIDE = ("torch", "torchvision", "onnx", "training", "export", "benchmarks")
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
"""


def state_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slimserve" / "image"
    return Path(os.environ.get("SLIMSERVE_IMAGE_HOME", default))


def check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise SlimserveError(f"{', '.join(missing)} not installed; install with: {INSTALL}")


def container_env(state: Path) -> dict[str, str]:
    """The environment for podman/buildah with the private configuration written out."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "containers.conf").write_text(CONTAINERS_CONF)
    (state / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{state / "storage"}"\nrunroot = "{state / "run"}"\n'
    )
    return {
        **os.environ,
        "CONTAINERS_CONF": str(state / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(state / "storage.conf"),
        "BENTOML_DO_NOT_TRACK": "true",
    }


def run(command: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """``command``; a failure raises with the command and the end of its output."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise SlimserveError(f"`{' '.join(command)}` failed ({result.returncode}):\n{output}")
    return result


def base_recipe() -> str:
    """What the base is made of, as a label: a changed recipe rebuilds it."""
    return hashlib.sha256(json.dumps([RELEASE, BASE_PACKAGES, BASE_CHANGES]).encode()).hexdigest()[:16]


def build_base(state: Path, env: dict[str, str]) -> float:
    """The base image from Debian packages, once per recipe; the seconds it took (0 when cached)."""
    label = subprocess.run(
        ["podman", "image", "inspect", "--format", '{{index .Labels "slimserve.base"}}', BASE_IMAGE],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if label.returncode == 0 and label.stdout.strip() == base_recipe():
        return 0.0
    start = time.monotonic()
    rootfs = state / f"base-{RELEASE}.tar"
    run(
        ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", RELEASE, str(rootfs)],
        env,
    )
    changes = [f"LABEL slimserve.base={base_recipe()}", *BASE_CHANGES]
    changes = [arg for change in changes for arg in ("--change", change)]
    run(["podman", "import", *changes, str(rootfs), BASE_IMAGE], env)
    rootfs.unlink()
    return time.monotonic() - start


def build_bento(env: dict[str, str]) -> str:
    """`bentoml build` of the checkout (models chosen by SLIMSERVE_BUNDLE etc.); the Bento tag."""
    command = [sys.executable, "-m", "bentoml", "build", "-f", str(REPO / "bentofile.yaml"), str(REPO)]
    built = run([*command, "-o", "tag"], env, cwd=REPO)
    return built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def containerize(tag: str, env: dict[str, str]) -> str:
    """BentoML's own Dockerfile for ``tag``, built by buildah on the local base; the image name."""
    image = f"localhost/{tag}"
    run(
        [
            sys.executable, "-m", "bentoml", "containerize", tag, "--backend", "buildah",
            "--image-tag", image, "--opt", "network=host", "--opt", "runtime=runc",
            "--opt", f"volume={HOST_CA}:{HOST_CA}:ro",
        ],
        env,
    )  # fmt: skip
    return image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(image: str, env: dict[str, str], log: Path) -> Iterator[tuple[str, float]]:
    """The image serving on a free loopback port (host network); yields (url, seconds to ready)."""
    port = free_port()
    name = f"slimserve-check-{port}"
    command = ["podman", "run", "--rm", "--name", name, "--network", "host", image]
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        while not _ready(url):
            if process.poll() is not None:
                raise SlimserveError(
                    f"the container exited ({process.returncode}):\n{log.read_text()[-3000:]}"
                )
            if time.monotonic() - start > 300:
                raise SlimserveError(f"the container was not ready in 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, time.monotonic() - start
    finally:
        subprocess.run(["podman", "stop", "--time", "20", name], env=env, capture_output=True)
        process.wait(timeout=60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def torch_side_modules(image: str, env: dict[str, str]) -> dict[str, str | None]:
    """Where the image's Python finds torch, training code etc. (None: nowhere) and the service."""
    probe = (
        "import importlib.util, json, sys; sys.path.insert(0, 'src'); "
        f"names = {[*TORCH_SIDE, 'service.service']!r}; "
        "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) for n in names}))"
    )
    result = run(["podman", "run", "--rm", "--network", "none", image, "python", "-c", probe], env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def image_bytes(image: str, env: dict[str, str]) -> int:
    return int(run(["podman", "image", "inspect", "--format", "{{.Size}}", image], env).stdout.strip())


def source_answer(bento_tag: str, answer: dict, png: bytes) -> list[dict]:
    """The source service's top-10 for ``png`` from the model the image answered with: the
    same stored files, loaded by this checkout's service code."""
    import bentoml

    from service.config import ServeConfig
    from service.http import top_k
    from service.store import load_variant

    stored = [bentoml.models.get(m.tag) for m in bentoml.get(bento_tag).info.all_models]
    wanted = {"bundle": answer["bundle"], "variant": answer["variant"]}
    [model] = [
        m for m in stored if m.tag.version == answer["version"] and wanted.items() <= m.info.labels.items()
    ]
    config = ServeConfig(providers="cpu")
    variant = load_variant(answer["variant"], str(model.tag), Path(model.path), config)
    logits = variant.backend.run(variant.preprocessor.payload(png, config.max_pixels))
    return top_k(logits[0], 10, variant.classes)


def default_png() -> bytes:
    """A real image: the first Fashion-MNIST test picture, as a PNG."""
    import io

    from training.datasets import load_data

    buffer = io.BytesIO()
    load_data("fashion-mnist").test[0][0].save(buffer, format="PNG")
    return buffer.getvalue()


def build_and_check(png: bytes, log: Path) -> dict:
    """Everything ``make image`` promises; the report, or SlimserveError naming what failed."""
    state = state_dir()
    env = container_env(state)
    base_seconds = build_base(state, env)
    start = time.monotonic()
    tag = build_bento(env)
    image = containerize(tag, env)
    build_seconds = time.monotonic() - start
    found = torch_side_modules(image, env)
    carried = [name for name in TORCH_SIDE if found[name] is not None]
    if carried or found["service.service"] is None:
        raise SlimserveError(f"the image should carry the service and none of {TORCH_SIDE}: {found}")
    with running(image, env, log) as (url, ready_seconds):
        response = httpx.post(f"{url}/predict?top_k=10", content=png, headers={"Content-Type": "image/png"})
    if response.status_code != 200:
        raise SlimserveError(f"POST /predict answered {response.status_code}: {response.text[:500]}")
    served = response.json()["predictions"]
    expected = source_answer(tag, response.json(), png)
    report = {
        "bento": tag,
        "image": image,
        "base_image": BASE_IMAGE,
        "image_bytes": image_bytes(image, env),
        "base_build_seconds": round(base_seconds, 1),
        "bento_and_image_build_seconds": round(build_seconds, 1),
        "ready_seconds": round(ready_seconds, 1),
        "served": served,
        "expected": expected,
        "modules": found,
    }
    worst = max(abs(s["probability"] - e["probability"]) for s, e in zip(served, expected, strict=True))
    if [s["index"] for s in served] != [e["index"] for e in expected] or worst > 1e-5:
        raise SlimserveError(f"the image answers differently from the source service:\n{json.dumps(report)}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/image/image.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--png", type=Path, help="the image to post (default: a Fashion-MNIST test picture)")
    parser.add_argument("--report", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    try:
        check_tools()
        if args.png is not None and not args.png.is_file():
            raise SlimserveError(f"no PNG at {args.png}")
        png = args.png.read_bytes() if args.png else default_png()
        log = state_dir() / "container.log"
        state_dir().mkdir(parents=True, exist_ok=True)
        report = build_and_check(png, log)
    except SlimserveError as exc:
        print(f"make image: error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text)
    print(text)
    mib = report["image_bytes"] / 2**20
    print(
        f"{report['image']}: {mib:.0f} MiB, built in {report['bento_and_image_build_seconds']} s "
        f"(+{report['base_build_seconds']} s base), ready in {report['ready_seconds']} s; "
        "the answer equals the source service's",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
