"""The browser tests find a Chromium on any machine the README's set-up prepared."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import NO_BROWSER, launch_chromium

pytestmark = pytest.mark.e2e


def test_without_a_system_chromium_playwrights_own_is_used_or_the_way_to_get_one_is_named(monkeypatch):
    """On a machine without the system's Chromium: Playwright's own browser launches when installed
    (`python -m playwright install chromium`), else the fixture names both ways to get one."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with sync_playwright() as p:
        try:
            browser = launch_chromium(p)
        except RuntimeError as exc:
            assert str(exc) == NO_BROWSER
            return
        page = browser.new_page()
        page.set_content("<p>ok</p>")
        assert page.inner_text("p") == "ok"
        browser.close()
