"""The API on a real waitress server: concurrent clients, overload answers, the browser page."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from api_helpers import LiveServer, make_env, ready_app
from browser_helpers import chromium
from chexnet.errors import Overloaded
from chexnet.options import PredictOptions


@pytest.fixture(scope="module")
def server(app):
    live = LiveServer(app, threads=16)
    yield live
    live.close()


def test_sixteen_concurrent_clients_each_get_their_own_result(server, env, nih_dir, onnx_predictor):
    images = sorted(nih_dir.glob("*.png"))[:16]
    expected = {
        p.name: [f.probability for f in onnx_predictor.predict(p.read_bytes, PredictOptions(heatmaps="none")).findings]
        for p in images
    }
    token = env.token()

    def call(path):
        response = requests.post(
            f"{server.url}/api/v1/predict?heatmaps=top",
            files={"image": (path.name, path.read_bytes())},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        return path.name, response

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, images * 2))
    for name, response in results:
        assert response.status_code == 200, response.text
        got = [f["probability"] for f in response.json()["findings"]]
        np.testing.assert_allclose(got, expected[name], atol=1e-5, err_msg=name)
    assert len({r.json()["request_id"] for _, r in results}) == len(results)
    assert requests.get(f"{server.url}/api/v1/health", timeout=10).json() == {"status": "ok"}


def test_overloaded_is_503_with_retry_after(server, env, app, nih_sample, monkeypatch):
    def refuse(tensor):
        raise Overloaded("The server is busy with other images; retry in a few seconds.")

    monkeypatch.setattr(app.extensions["chexnet"].models["cxr10"].batcher, "submit", refuse)
    response = requests.post(
        f"{server.url}/api/v1/predict",
        data=nih_sample[0].read_bytes(),
        headers={"Authorization": f"Bearer {env.token()}"},
        timeout=60,
    )
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "overloaded"


def test_upload_over_limit_is_json_413_on_the_wire(tmp_path, demo_bundle):
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_MAX_UPLOAD_MB="1")
    live = LiveServer(ready_app(env))
    try:
        response = requests.post(
            f"{live.url}/api/v1/predict",
            data=b"\x89PNG\r\n\x1a\n" + b"0" * (3 * 2**20 // 2),
            headers={"Authorization": f"Bearer {env.token()}", "Content-Type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    finally:
        live.close()


@pytest.fixture()
def browser():
    """Debian's Chromium, headless, with nothing of its own reaching out."""
    with chromium() as launched:
        yield launched


def test_browser_page_shows_findings_heatmaps_and_demo_banner(server, env, nih_sample, tmp_path, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    assert page.locator("#demo-banner").is_hidden()
    page.fill("#token", env.token())
    page.click("#load-models")
    page.wait_for_selector("#model option[value=cxr10]", state="attached")
    assert page.locator("#demo-banner").is_visible()
    page.set_input_files("#file", str(nih_sample[0]))
    page.select_option("#heatmaps", "all")
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])")
    assert page.locator("#findings tbody tr").count() == 10
    assert page.locator("#heatmap-list img").count() == 10
    assert "NOT FOR DIAGNOSIS" in page.locator("#demo-banner").inner_text()
    assert page.locator("#findings tbody tr").first.get_attribute("data-code") == "atelectasis"
    triage = page.locator("#triage")  # no rules on this server: routine, decided by the bundle's thresholds
    assert triage.get_attribute("data-level") == "routine"
    assert (
        triage.inner_text()
        == "Priority: ROUTINE (no priority rules set) · from DEMO weights, not a triage · thresholds: bundle"
    )
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    page.fill("#token", "not-a-token")
    page.click("#submit")
    page.wait_for_selector("#status.error")
    assert "token_invalid" in page.locator("#status").inner_text()


def test_docs_page_authorizes_and_tries_predict_offline(server, env, nih_sample, browser):
    """Swagger UI from the package, no network: Authorize with the token, then "Try it out" on predict."""
    page = browser.new_page()
    outside = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    page.goto(server.url + "/api/v1/docs")
    page.click("button.authorize")
    page.fill(".auth-container input", env.token())
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.btn-done")
    operation = page.locator("#operations-default-predict")
    operation.locator(".opblock-summary").click()
    operation.locator("input[type=file]").set_input_files(str(nih_sample[0]))
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("200")
    assert (
        "atelectasis" in operation.locator(".live-responses-table tbody .response-col_description").first.inner_text()
    )
    assert outside == [], "the docs page loads nothing from outside this server"
