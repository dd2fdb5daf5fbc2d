"""What the Bento and image tests share: build the Bento, ask a deployed service, and the
source service's own answer to compare with.

The reference answer comes from the source checkout's ``service.store.load_variant``:
the same verified manifest, preprocessing and ONNX Runtime session the source service
serves, in this process, so a deployed copy must give the very same probabilities.
"""

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BENTOFILE = REPO / "bentofile.yaml"
TOP_K = 10


def bentofile() -> dict:
    return yaml.safe_load(BENTOFILE.read_text())


def build_bento(env: dict[str, str]) -> tuple[str, Path]:
    """`bentoml build` of the checkout into ``env["BENTOML_HOME"]``; returns (tag, bento dir)."""
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE), str(REPO), "-o", "tag"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return tag, Path(env["BENTOML_HOME"]) / "bentos" / name / version


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def source_predictions(model_dir: Path, tag: str, variant: str, png: bytes) -> list[dict]:
    """The source service's top-k for ``png``: its store loader, preprocessor and backend."""
    from service.config import ServeConfig
    from service.http import top_k
    from service.preprocess import open_image
    from service.store import load_variant

    config = ServeConfig(providers="cpu")
    loaded = load_variant(variant, tag, model_dir, config)
    logits = loaded.backend.run(loaded.preprocessor.batch([open_image(png, config.max_pixels)]))
    return top_k(logits[0], TOP_K, loaded.classes)


def wait_ready(url: str, alive, log: Path, timeout_s: float = 300) -> float:
    """Seconds until ``url``/readyz answers 200; fails with the log when ``alive()`` turns false."""
    start = time.monotonic()
    while True:
        assert alive(), f"the server exited before it was ready:\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        assert time.monotonic() - start < timeout_s, f"not ready in {timeout_s} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def served_predictions(url: str, png: bytes) -> dict:
    response = httpx.post(
        f"{url}/predict?top_k={TOP_K}", content=png, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_predictions(served: list[dict], expected: list[dict]) -> None:
    assert [p["index"] for p in served] == [p["index"] for p in expected], json.dumps(served)
    assert [p["label"] for p in served] == [p["label"] for p in expected]
    worst = max(abs(s["probability"] - e["probability"]) for s, e in zip(served, expected, strict=True))
    assert worst < 1e-5, f"probabilities differ by up to {worst}"


def without_checkout(env: dict[str, str]) -> dict[str, str]:
    """``env`` less every variable that could put the source checkout on the import path."""
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")} | {
        "PYTHONNOUSERSITE": "1"
    }


def registered_fp32_bundle(run_dir: Path, out: Path, name: str):
    """A quick fp32-only bundle of ``run_dir`` (300 test images), registered in the store the
    way `slimserve export` registers one: what the Bento and the image are built from."""
    from export.pipeline import export_bundle
    from export.registry import register_bundle

    manifest = export_bundle(
        run_dir, out=out, name=name, version="v1", variants=["fp32"], limit=300, register=False
    )
    register_bundle(manifest)
    return manifest
