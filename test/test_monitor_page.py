"""The /monitor page in headless Chromium: drawn from a roll-up of real predictions (canvases with pixels, the
page's own summary numbers equal to the roll-up's), and with no data (the empty-state message); no console
errors either way, and nothing fetched from outside the server (the chart library is vendored)."""

import pytest
import requests

from api_helpers import LiveServer, make_env, ready_app
from browser_helpers import chromium, watched_page
from sample_data import ROOT

# The share of a canvas's pixels that are not transparent: a drawn chart has axes, bars and lines.
INK = """(canvas) => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) ink++;
  return ink / (canvas.width * canvas.height);
}"""


CHART_JS = ROOT / "chexnet" / "api" / "vendor" / "chart.umd.min.js"


@pytest.fixture()
def live(tmp_path, demo_bundle):
    assert CHART_JS.is_file(), "the chart library is not vendored: run scripts/vendor-js.sh (make test does)"
    env = make_env(tmp_path, demo_bundle.path)
    server = LiveServer(ready_app(env))
    try:
        yield env, server
    finally:
        server.close()


def _open(page, server, env, window="day"):
    page.goto(server.url + "/monitor")
    page.fill("#token", env.token())
    page.select_option("#window", window)
    page.click("#load")
    page.wait_for_function("document.querySelector('#status').textContent.includes('from')")


def test_monitor_page_draws_the_rollup_of_real_predictions(live, nih_sample, dicom_dir, tmp_path):
    env, server = live
    files = [*nih_sample[:3], *sorted(dicom_dir.glob("*.dcm"))]
    for path in files:
        response = requests.post(
            server.url + "/api/v1/predict", headers=env.auth(), files={"image": path.read_bytes()}, timeout=120
        )
        assert response.status_code == 200, response.text
    refused = requests.post(server.url + "/api/v1/predict", headers=env.auth(), data=b"GIF89a", timeout=30)
    assert refused.status_code == 415
    expected = requests.get(server.url + "/api/v1/monitor", headers=env.auth(), timeout=30).json()

    with chromium() as browser:
        page, errors, outside = watched_page(browser, server.url)
        _open(page, server, env)
        page.wait_for_selector("#model-cxr10 .summary")
        summary = page.locator("#model-cxr10 .summary")
        assert int(summary.get_attribute("data-predictions")) == expected["models"][0]["predictions"] == len(files)
        assert f"{len(files)} predictions" in summary.inner_text()
        assert "1 refused requests" in page.locator("#status").inner_text()
        assert page.locator("#model-cxr10 .banner").inner_text().startswith("DEMO MODEL")
        canvases = page.locator("#models canvas, #refusals")
        # 10 class histograms, 2 timelines, 6 input-mix and warning charts, and the refusals chart
        assert canvases.count() == 10 + 2 + 6 + 1
        ink = [canvas.evaluate(INK) for canvas in canvases.all()]
        assert all(share > 0.01 for share in ink), ink
        assert page.locator("#empty").is_hidden()
        shot = tmp_path / "monitor.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"monitor page screenshot: {shot}")
        assert errors == [] and outside == []


def test_monitor_page_with_no_data_says_so(live, tmp_path):
    env, server = live
    with chromium() as browser:
        page, errors, outside = watched_page(browser, server.url)
        _open(page, server, env, "week")
        assert page.locator("#empty").is_visible()
        assert "No predictions" in page.locator("#empty").inner_text()
        assert page.locator("#models canvas").count() == 0
        assert page.locator("#overview").is_hidden()
        page.screenshot(path=str(tmp_path / "monitor-empty.png"), full_page=True)
        print(f"empty monitor page screenshot: {tmp_path / 'monitor-empty.png'}")
        assert errors == [] and outside == []

        page.fill("#token", "not-a-token")
        page.click("#load")
        page.wait_for_selector("#status.error")
        assert "token_invalid" in page.locator("#status").inner_text()
        # the browser logs the 401 response itself; the page's script raised nothing
        assert [e for e in errors if "status of 401" not in e] == []
