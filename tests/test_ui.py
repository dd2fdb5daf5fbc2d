"""The upload page (`/ui`) and Swagger UI (`/`) end to end in headless Chromium.

Debian's chromium (`make browser` installs it) driven by Playwright; Playwright's own
browser download is not used. A real PNG is chosen and dropped, the top-1 label and bars
are read off the page and compared with the service's JSON; a bad file shows the
service's own error message; nothing loads from outside the server.
"""

import base64
import re
from pathlib import Path

import pytest
from test_openapi import api_server
from test_service import fashion  # noqa: F401 (a fixture)

from slimserve.samples import write_pngs

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def served(tiny_cnn_run, tmp_path_factory, start_server):
    yield from api_server("ui-cnn", tiny_cnn_run, tmp_path_factory, start_server)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served):
    """A fresh page that records every URL it requests."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.requested = []
    page.on("request", lambda request: page.requested.append(request.url))
    yield page
    context.close()


@pytest.fixture(scope="module")
def pngs(fashion, tmp_path_factory) -> list[Path]:  # noqa: F811 (the imported fixture)
    samples = (fashion.test[index] for index in range(3))
    return write_pngs(
        ((image, fashion.classes[label]) for image, label in samples), tmp_path_factory.mktemp("ui-pngs")
    )


def only_local(requested: list[str], url: str) -> list[str]:
    return [u for u in requested if not (u.startswith(url + "/") or u.startswith("blob:" + url))]


@pytest.mark.http
def test_upload_page_shows_top_k_bars_then_a_bad_files_error(served, page, pngs, tmp_path):
    server, _ = served
    expected = server.client.post("/predict", files={"file": pngs[0].read_bytes()}).json()
    page.goto(f"{server.url}/ui")
    page.wait_for_selector("#variant option", state="attached")
    assert page.input_value("#variant") == expected["variant"]  # the default variant preselected
    page.set_input_files("#files", str(pngs[0]))
    card = page.locator(".card").first
    card.locator(".bars li").first.wait_for()
    assert card.locator(".name").inner_text() == pngs[0].name
    labels = card.locator(".bars .label").all_inner_texts()
    assert labels == [p["label"] for p in expected["predictions"]]  # top-1 first, then the rest
    widths = [card.locator(".bars .bar").nth(i).evaluate("e => e.style.width") for i in range(len(labels))]
    # The browser normalises "1.0%" to "1%": compare the numbers the page set.
    shown = [float(w.removesuffix("%")) for w in widths]
    assert shown == pytest.approx([p["probability"] * 100 for p in expected["predictions"]], abs=0.05 + 1e-9)
    rendered = [card.locator(".bars .bar").nth(i).bounding_box()["width"] for i in range(len(labels))]
    assert rendered == sorted(rendered, reverse=True) and rendered[0] > rendered[-1]
    meta = card.locator(".meta").inner_text()
    assert expected["variant"] in meta and expected["provider"] in meta
    assert re.search(r"\d+\.\d ms \(preprocess \d+\.\d, model \d+\.\d\)", meta), meta

    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page.set_input_files("#files", str(bad))
    failed = page.locator(".card.failed").first
    failed.locator(".error").wait_for()
    assert failed.locator(".error").inner_text() == "not a readable PNG, JPEG, WebP, BMP or GIF image"
    assert failed.locator(".meta").inner_text() == "HTTP 400"
    assert failed.locator(".bars li").count() == 0
    assert page.locator(".card").count() == 2
    page.screenshot(path=str(tmp_path / "upload-page.png"), full_page=True)
    assert only_local(page.requested, server.url) == []


@pytest.mark.http
def test_several_images_chosen_or_dropped_each_get_a_card(served, page, pngs):
    server, _ = served
    page.goto(f"{server.url}/ui")
    page.wait_for_selector("#variant option", state="attached")
    page.select_option("#variant", "fp32")
    page.fill("#top-k", "2")
    page.set_input_files("#files", [str(p) for p in pngs[:2]])
    bars = page.locator(".card .bars li")
    bars.nth(3).wait_for()  # (wait_for_function would eval a string, which the page's CSP forbids)
    data = base64.b64encode(pngs[2].read_bytes()).decode()
    transfer = page.evaluate_handle(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        data,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    bars.nth(5).wait_for()
    assert bars.count() == 6
    names = page.locator(".card .name").all_inner_texts()
    assert names == ["dropped.png", pngs[1].name, pngs[0].name]  # newest first
    for path, name in ((pngs[2], "dropped.png"), (pngs[0], pngs[0].name)):
        expected = server.client.post(
            "/predict?variant=fp32&top_k=2", files={"file": path.read_bytes()}
        ).json()
        card = page.locator(".card", has=page.locator(".name", has_text=name))
        assert card.locator(".bars .label").all_inner_texts() == [p["label"] for p in expected["predictions"]]
        assert "fp32" in card.locator(".meta").inner_text()


@pytest.mark.http
def test_swagger_ui_uploads_an_image_and_shows_the_answer(served, page, pngs):
    server, _ = served
    expected = server.client.post("/predict", files={"file": pngs[0].read_bytes()}).json()
    # BentoML's own Swagger page loads Google Tag Manager and GitHub buttons; refuse them, as
    # an offline host would, so the test shows the page works without them.
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())
    page.goto(f"{server.url}/")
    operation = page.locator("#operations-Prediction-predict")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    operation.locator("input[type=file]").set_input_files(str(pngs[0]))
    operation.locator("button.execute").click()
    answer = operation.locator(".live-responses-table .response-col_description pre").first
    answer.wait_for()
    text = answer.inner_text()
    assert f'"label": "{expected["predictions"][0]["label"]}"' in text
    assert (
        operation.locator(".live-responses-table tbody .response-col_status").first.inner_text().strip()
        == "200"
    )


@pytest.mark.http
def test_page_files_are_same_origin_only_and_other_methods_get_json_405(served):
    server, _ = served
    page = server.client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "http" not in policy
    assert server.client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert server.client.get("/ui/style.css").headers["content-type"].startswith("text/css")
    refused = server.client.post("/ui", content=b"x")
    assert refused.status_code == 405 and "not allowed" in refused.json()["error"]
    assert server.client.get("/ui/index.html").status_code == 404  # only the three fixed names
