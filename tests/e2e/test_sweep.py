"""A tiny sweep in a real browser: planned from the draft (each strategy at three rates), watched while it
runs, answered in words (chosen on validation, graded on test), applied."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from core.store import RunStore, SweepStore
from tests.e2e.conftest import ONE_THREAD, AppServer, wait_idle
from tests.e2e.test_main_path import fill_number, nav, snap


@pytest.fixture
def server(tmp_path):
    server = AppServer(tmp_path, env=ONE_THREAD).start()
    yield server
    server.stop()


def test_a_tiny_grid_sweep_runs_to_its_answer(server, page, shots):
    page.goto(server.url)
    wait_idle(page)
    for label in ("Height", "Width"):
        fill_number(page, label, 32)
    nav(page, "Sweep")
    page.get_by_test_id("stRadio").get_by_text("grid", exact=True).click()
    wait_idle(page)
    expect(page.get_by_text("6 runs", exact=False)).to_be_visible()  # head and full at three rates, one seed
    snap(page, shots / "sweep_form.png")
    page.get_by_role("button", name="Start the sweep").click()
    expect(page.get_by_text("runs ended")).to_be_visible()
    [record] = SweepStore(RunStore(server.runs_dir)).list()
    expect(page.get_by_role("heading", name=record.name)).to_be_visible()
    snap(page, shots / "sweep_running.png")
    expect(page.get_by_text("6 of 6 runs ended")).to_be_visible(timeout=360_000)
    answer = page.get_by_test_id("stAlert").filter(has_text="test accuracy")
    expect(answer).to_be_visible()
    expect(answer).to_contain_text("chosen from 0.003, 0.01, 0.03 on validation")
    snap(page, shots / "sweep_done.png")
    page.get_by_role("button", name="in my draft").click()
    expect(page.get_by_text("The draft now trains what")).to_be_visible()
