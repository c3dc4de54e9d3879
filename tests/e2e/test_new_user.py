"""What a new user met (issue 14), in a real browser: the first-run panel, the pretrain shortcut that must
not let the Model page swap the backbone, Enter in "Run name", a refresh that keeps the setup, and the
pages worth a screenshot (the Model page with VGG-19 FC1+FC2 is the README's picture)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from core.store import RunStore
from tests.e2e.conftest import (
    ONE_THREAD,
    AppServer,
    open_train_small,
    url_run_id,
    wait_idle,
)
from tests.e2e.test_main_path import choose, fill_number, nav, snap


@pytest.fixture
def fresh_server(tmp_path):
    """An app on an empty runs folder: what a new user opens."""
    server = AppServer(tmp_path, env=ONE_THREAD).start()
    yield server
    server.stop()


def header_note(page, label: str):
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricDelta")


def test_pretrain_shortcut_then_the_model_page_keeps_the_backbone(fresh_server, page, shots):
    page.goto(fresh_server.url)
    wait_idle(page)
    panel = page.locator(".st-key-welcome")
    expect(panel).to_contain_text("Start here")
    snap(page, shots / "first_run_panel.png")

    panel.get_by_role("button", name="Pretrain the demo backbone").click()
    wait_idle(page)
    expect(page.get_by_role("heading", name="Train", exact=True)).to_be_visible()
    notice = page.get_by_test_id("stAlert").filter(has_text="Queued the demo backbone")
    expect(notice).to_contain_text("this changed:")
    expect(page).to_have_url(re.compile(r"[?&]run=\d{8}-\d{6}-[0-9a-f]{4}"))  # the URL follows the page a moment later
    backbone = url_run_id(page)
    assert backbone and RunStore(fresh_server.runs_dir).load(backbone).name.startswith("demo backbone")
    expect(header_note(page, "Model")).to_contain_text(f"weights of run …{backbone[-4:]}")
    snap(page, shots / "pretrain_notice.png")

    # The Model page while the backbone is queued or training: it lists it, labelled, and changes nothing.
    nav(page, "Model")
    expect(page.get_by_role("combobox", name="Weights")).to_have_value("An earlier run")
    expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(
        re.compile(rf"^demo backbone .*\({backbone}\) · (queued|running)$"))
    expect(page.get_by_test_id("stAlert").filter(has_text="waits in the queue")).to_be_visible()
    snap(page, shots / "model_page_backbone_in_flight.png")
    nav(page, "Train")
    expect(header_note(page, "Model")).to_contain_text(f"weights of run …{backbone[-4:]}")  # still the backbone


def test_enter_in_run_name_starts_nothing_and_start_starts_one_run(app_server, page, shots):
    open_train_small(page, app_server)
    store = RunStore(app_server.runs_dir)
    before = {r.id for r in store.list()}
    epochs = page.get_by_test_id("stNumberInput").filter(has_text="Epochs").locator("input")
    epochs.fill("30")
    name = page.get_by_test_id("stTextInput").filter(has_text="Run name").locator("input")
    name.fill("one action, one run")
    name.press("Enter")
    page.wait_for_timeout(2000)
    wait_idle(page)
    assert {r.id for r in store.list()} == before  # Enter did not submit the form
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("heading", name="Run: one action, one run")).to_be_visible()
    started = {r.id for r in store.list()} - before
    assert len(started) == 1
    page.get_by_role("button", name="Start training").click()  # the same again, while it trains
    expect(page.get_by_test_id("stAlert").filter(has_text="This exact run was started")).to_be_visible()
    assert {r.id for r in store.list()} - before == started
    snap(page, shots / "duplicate_refused.png")
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_idle(page)


def test_a_refresh_keeps_the_setup_and_a_finished_run_offers_its_downloads(app_server, page, shots):
    open_train_small(page, app_server, size=48)
    page.get_by_test_id("stNumberInput").filter(has_text="Epochs").locator("input").fill("2")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("Freeze audit passed")).to_be_visible(timeout=240_000)
    assert "tab=" in page.url
    page.reload()  # the same tab: the same setup, and the run is still this tab's own
    wait_idle(page)
    expect(page.get_by_test_id("stMetric").filter(has_text="Input")).to_contain_text("48×48")
    expect(page.get_by_test_id("stDownloadButton").filter(has_text="Weights (.pt state dict)")).to_be_visible()
    expect(page.get_by_test_id("stDownloadButton").filter(has_text="Metrics (CSV)")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_test_id("stDownloadButton").filter(has_text="Metrics (CSV)").click()
    assert download.value.suggested_filename.startswith("metrics-")
    page.wait_for_timeout(1000)
    snap(page, shots / "train_finished_downloads.png")


def test_model_page_vgg19_fc1_fc2(app_server, page, shots):
    page.goto(app_server.url)
    wait_idle(page)
    choose(page, "Architecture", "VGG-19")
    fill_number(page, "Height", 224)
    fill_number(page, "Width", 224)
    page.get_by_role("button", name="FC1 + FC2 + head").click()
    wait_idle(page)
    expect(page.get_by_test_id("stMetric").filter(has_text="Strategy").get_by_test_id("stMetricValue")).to_have_text(
        "FC1 + FC2 + head")
    page.wait_for_timeout(1000)
    snap(page, shots / "model_vgg19_fc1_fc2.png")  # the README's picture, docs/model_page.png
