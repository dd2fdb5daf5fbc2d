"""BentoML's own HTTP clients against a live server: a file path, a PIL image, options and
batches give the same answer as curl; refusals arrive as BentoML's exceptions with the
service's status and JSON message."""

import asyncio
import io
import json
import subprocess
from pathlib import Path

import bentoml
import pytest
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from PIL import Image
from test_openapi import api_server
from test_service import fashion  # noqa: F401 (a fixture)

from slimserve.samples import write_pngs


@pytest.fixture(scope="module")
def served(tiny_cnn_run, tmp_path_factory, start_server):
    yield from api_server("client-cnn", tiny_cnn_run, tmp_path_factory, start_server)


@pytest.fixture(scope="module")
def pngs(fashion, tmp_path_factory) -> list[Path]:  # noqa: F811 (the imported fixture)
    samples = (fashion.test[index] for index in range(3))
    return write_pngs(
        ((image, fashion.classes[label]) for image, label in samples), tmp_path_factory.mktemp("pngs")
    )


def curl(url: str, *args: str) -> dict:
    out = subprocess.run(["curl", "-sS", "--fail-with-body", *args, url], capture_output=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def client(served):
    server, _ = served
    with bentoml.SyncHTTPClient(server.url) as client:
        yield client


@pytest.mark.http
def test_path_str_and_pil_image_give_curls_answer(served, client, pngs):
    server, _ = served
    expected = curl(f"{server.url}/predict", "-F", f"file=@{pngs[0]}")["predictions"]
    assert client.predict(image=pngs[0])["predictions"] == expected
    assert client.predict(pngs[0])["predictions"] == expected  # positional, like a Python call
    assert client.predict(image=str(pngs[0]))["predictions"] == expected
    with Image.open(pngs[0]) as image:
        assert client.predict(image=image)["predictions"] == expected
    # BentoML's client uploads a PIL image from the file it was opened from (Image.fp): an
    # image decoded from bytes in memory works too, an Image.new() one has no file to send.
    with Image.open(io.BytesIO(pngs[0].read_bytes())) as image:
        assert client.predict(image=image)["predictions"] == expected
    assert client.predict_unbatched(image=pngs[0])["predictions"] == expected


@pytest.mark.http
def test_options_reach_the_route_as_curl_sends_them(served, client, pngs):
    server, manifest = served
    variant = "int8" if "int8" in manifest.variants else "fp32"  # not the default where int8 exists
    answer = client.predict(image=pngs[1], variant=variant, top_k=2)
    assert answer["variant"] == variant
    expected = curl(f"{server.url}/predict?variant={variant}&top_k=2", "-F", f"file=@{pngs[1]}")
    assert answer["predictions"] == expected["predictions"]
    assert len(answer["predictions"]) == 2


@pytest.mark.http
def test_batch_matches_one_by_one(client, pngs):
    batch = client.predict_batch(images=pngs, top_k=3)
    singles = [client.predict_unbatched(image=p, top_k=3)["predictions"] for p in pngs]
    assert [r["predictions"] for r in batch["results"]] == singles


@pytest.mark.http
def test_refusals_are_bentoml_exceptions_with_the_services_message(client, pngs, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InvalidArgument) as bad_file:
        client.predict(image=text)
    assert bad_file.value.error_code == 400
    assert json.loads(bad_file.value.message) == {"error": "not a readable PNG, JPEG, WebP, BMP or GIF image"}
    with pytest.raises(NotFound) as unknown:
        client.predict(image=pngs[0], variant="nope")
    assert "unknown model 'nope'" in json.loads(unknown.value.message)["error"]
    with pytest.raises(BentoMLException) as zero:
        client.predict(image=pngs[0], top_k=0)
    assert zero.value.error_code == 400 and "at least 1" in zero.value.message


@pytest.mark.http
def test_async_client_gives_the_same_answers(served, client, pngs):
    server, _ = served

    async def run() -> list[dict]:
        # Concurrent calls on one client get PIL images, not paths: BentoML 1.4's client closes
        # every file it opened for a path when any call ends, so a concurrent call still sending
        # its body fails with "read of closed file" (seen on a slower CPU). A PIL image is sent
        # from its own file, which the client leaves alone. The README says so.
        images = [Image.open(p) for p in pngs]
        try:
            async with bentoml.AsyncHTTPClient(server.url) as remote:
                return await asyncio.gather(*(remote.predict(image=image) for image in images))
        finally:
            for image in images:
                image.close()

    answers = asyncio.run(run())
    assert [a["predictions"] for a in answers] == [client.predict(image=p)["predictions"] for p in pngs]
