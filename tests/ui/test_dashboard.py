"""The dashboard in real headless Chromium against a real cluster (facade + worker processes).

Every check goes through what a person sees: text in the page, rows in the
tables, the prediction shown after a submission. Task rows reach the page
only through the WebSocket event stream (the page loads the task list once,
on connect), so a row that appears after a REST submission proves the page
is live.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import SAMPLES, TOKEN, LocalCluster, image_tensor, wait_until
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

LIVE_TIMEOUT_MS = 30_000


def _open(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#connection")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#dashboard")).to_be_visible()


def _succeeded(cluster: LocalCluster) -> int:
    return int(cluster.http.get("/cluster/metrics").json()["tasks_by_phase"]["Succeeded"])


def test_page_loads_and_lists_the_worker(
    worker_name: str, page: Page, ui_cluster: LocalCluster, dashboard_url: str
) -> None:
    """The worker appears by name with its device and backend; the token leaves the address bar.

    The page runs under its own Content-Security-Policy (this origin only) without a single console error,
    so it needs nothing from outside the facade.
    """
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    response = page.goto(dashboard_url)
    assert response is not None and response.ok
    assert "default-src 'self'" in response.headers["content-security-policy"]
    _open(page, dashboard_url)

    row = page.locator("#workers-table tbody tr", has_text=worker_name)
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text("active")
    expect(row.locator("td").nth(3)).to_have_text("onnxruntime")
    worker = ui_cluster.worker(worker_name)
    assert worker is not None
    expect(row.locator("td").nth(2)).to_contain_text(worker["device"]["name"])
    expect(page.locator("#stat-workers")).to_have_text("1 / 1")
    expect(page.locator("#cluster-health")).to_have_text("health: ok")
    expect(page.locator("#auth-error")).to_be_hidden()

    assert "token" not in page.url, "the token should be removed from the address bar"
    assert page.evaluate("sessionStorage.getItem('legacygpu.token')") == TOKEN
    assert errors == []


def test_page_changes_when_a_task_completes(
    worker_name: str, page: Page, ui_cluster: LocalCluster, dashboard_url: str, tmp_path: Path
) -> None:
    """A task submitted through the REST API shows up, turns Succeeded with its top-1 label, and the counts move."""
    _open(page, dashboard_url)
    before = _succeeded(ui_cluster)
    expect(page.locator("#phase-count-Succeeded")).to_have_text(str(before))

    task = ui_cluster.submit(model="digits", inputs=[image_tensor(SAMPLES / "digit-3.png")])
    row = page.locator(f'#tasks-table tbody tr[data-task-id="{task["id"]}"]')
    expect(row).to_have_attribute("data-phase", "Succeeded", timeout=LIVE_TIMEOUT_MS)
    expect(row.locator("td.top1")).to_have_text(re.compile(r"^3 \("), timeout=LIVE_TIMEOUT_MS)
    expect(row).to_contain_text(worker_name)
    expect(page.locator("#phase-count-Succeeded")).to_have_text(str(before + 1), timeout=LIVE_TIMEOUT_MS)

    done = ui_cluster.worker(worker_name)["tasks_succeeded"]  # type: ignore[index]
    worker_row = page.locator("#workers-table tbody tr", has_text=worker_name)
    expect(worker_row.locator("td").nth(5)).to_have_text(str(done), timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#stat-p50")).to_have_text(re.compile(r"ms$"))

    shots = Path(os.environ.get("LEGACYGPU_UI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    assert (shots / "dashboard.png").stat().st_size > 0


def test_submit_an_image_from_the_page(page: Page, ui_cluster: LocalCluster, dashboard_url: str) -> None:
    """Uploading a digit image runs a real task and shows its prediction; the API holds the same task."""
    _open(page, dashboard_url)
    expect(page.locator("#model-select")).to_have_value("digits")
    page.set_input_files("#image-input", str(SAMPLES / "digit-5.png"))
    page.click("#submit-button")

    expect(page.locator("#prediction-label")).to_have_text("5", timeout=LIVE_TIMEOUT_MS)
    message = page.locator("#submit-result").inner_text()
    task_id = re.search(r"task-[0-9a-f]+", message)
    assert task_id, message
    task = ui_cluster.task(task_id.group(0))
    assert task["phase"] == "Succeeded"
    assert task["result"]["top_k"][0]["label"] == "5"


def test_submit_a_drawing_from_the_page(page: Page, ui_cluster: LocalCluster, dashboard_url: str) -> None:
    """A digit drawn with the mouse is sent as a PNG and runs as a real task with a prediction."""
    _open(page, dashboard_url)
    box = page.locator("#draw-canvas").bounding_box()
    assert box is not None
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] - 20, steps=10)
    page.mouse.up()
    page.click("#submit-button")

    expect(page.locator("#prediction-label")).to_have_text(re.compile(r"^[0-9]$"), timeout=LIVE_TIMEOUT_MS)
    task_id = re.search(r"task-[0-9a-f]+", page.locator("#submit-result").inner_text())
    assert task_id
    task = ui_cluster.task(task_id.group(0))
    assert task["phase"] == "Succeeded"
    assert page.locator("#prediction-label").inner_text() == task["result"]["top_k"][0]["label"]


def test_submit_without_an_image_explains_what_is_missing(page: Page, dashboard_url: str) -> None:
    _open(page, dashboard_url)
    page.click("#submit-button")
    expect(page.locator("#submit-result")).to_have_text(re.compile("Choose an image file or draw a digit"))


def test_wrong_token_shows_an_auth_error_not_data(worker_name: str, page: Page, ui_cluster: LocalCluster) -> None:
    """A wrong token gets a 401 message and the token form; entering the right one shows the cluster."""
    page.goto(f"{ui_cluster.url}/ui#token=not-the-token")
    expect(page.locator("#auth-error")).to_be_visible()
    expect(page.locator("#auth-error")).to_contain_text("401")
    expect(page.locator("#token-panel")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    assert worker_name not in page.content()
    assert page.evaluate("sessionStorage.getItem('legacygpu.token')") is None

    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#workers-table tbody tr", has_text=worker_name)).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#auth-error")).to_be_hidden()
    expect(page.locator("#token-panel")).to_be_hidden()


def test_no_token_asks_for_one(page: Page, ui_cluster: LocalCluster) -> None:
    page.goto(f"{ui_cluster.url}/ui")
    expect(page.locator("#token-panel")).to_be_visible()
    expect(page.locator("#token-input")).to_be_focused()
    expect(page.locator("#auth-error")).to_be_hidden()
    expect(page.locator("#dashboard")).to_be_hidden()


def test_page_reconnects_after_the_facade_restarts(
    worker_name: str, page: Page, ui_cluster: LocalCluster, dashboard_url: str
) -> None:
    """Kill -9 the facade: the page says it is reconnecting, then goes live again and keeps updating.

    Runs last in this module because it restarts the shared cluster's facade.
    """
    _open(page, dashboard_url)
    ui_cluster.kill_api()
    expect(page.locator("#connection")).to_have_text(re.compile("reconnecting"), timeout=LIVE_TIMEOUT_MS)
    ui_cluster.start_api()
    expect(page.locator("#connection")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)
    wait_until(lambda: ui_cluster.worker(worker_name), timeout=30, what="the worker to be active again")

    task = ui_cluster.submit(model="digits", inputs=[image_tensor(SAMPLES / "digit-8.png")])
    row = page.locator(f'#tasks-table tbody tr[data-task-id="{task["id"]}"]')
    expect(row).to_have_attribute("data-phase", "Succeeded", timeout=LIVE_TIMEOUT_MS)
    expect(row.locator("td.top1")).to_have_text(re.compile(r"^8 \("), timeout=LIVE_TIMEOUT_MS)
