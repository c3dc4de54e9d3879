"""The Train page in a real browser: start a run, watch it live, refresh mid-run, see it finish."""

import re

from playwright.sync_api import expect

from tests.e2e.conftest import wait_idle


def test_start_watch_refresh_and_finish(app_server, page, shots):
    page.goto(app_server.url)
    wait_idle(page)
    page.get_by_role("button", name="Full fine-tune").click()  # ResNet-18, demo-target, 64 px by default
    wait_idle(page)
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Train").click()
    wait_idle(page)
    epochs = page.get_by_test_id("stNumberInput").filter(has_text="Epochs").locator("input")
    epochs.fill("12")
    page.get_by_role("button", name="Start training").click()

    # live: the progress bar appears and the loss chart grows while the page keeps serving
    progress = page.get_by_test_id("stProgress")
    expect(progress).to_contain_text(re.compile(r"Epoch \d+/12"), timeout=120_000)
    expect(progress).to_contain_text(re.compile(r"Epoch ([2-9]|1[0-2])/12"), timeout=120_000)
    assert "run=" in page.url
    page.screenshot(path=shots / "train_running.png", full_page=True)

    # a refresh shows the same run, still live
    run_url = page.url
    page.reload()
    expect(page.get_by_test_id("stProgress")).to_contain_text(re.compile(r"Epoch \d+/12"), timeout=60_000)
    assert page.url == run_url

    expect(page.get_by_text("Freeze audit passed")).to_be_visible(timeout=240_000)
    expect(page.get_by_test_id("stMetric").filter(has_text="Validation accuracy")).to_be_visible()
    page.wait_for_timeout(1500)
    page.screenshot(path=shots / "train_finished.png", full_page=True)
