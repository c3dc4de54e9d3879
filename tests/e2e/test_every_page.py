"""Every page opens in a browser with no exception, including by its own URL on a fresh server."""

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import wait_idle

PAGES = [("model", "Model"), ("data", "Data"), ("train", "Train"), ("classify", "Classify"), ("compare", "Compare"),
         ("sweep", "Sweep")]


def test_a_page_url_on_a_fresh_server_gets_the_whole_app(app_server, page):
    """Regression: with the views in a folder named `pages/`, Streamlit's legacy multipage mode
    served /train by itself (no router, no sidebar frame) when it was the server's first request."""
    page.goto(f"{app_server.url}/train")  # the first request this server sees
    wait_idle(page)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar).to_contain_text("Compute device")
    expect(sidebar.get_by_role("link", name="Model")).to_be_visible()


@pytest.mark.parametrize("path, title", PAGES)
def test_page_opens_without_exception(app_server, page, path, title, shots):
    page.goto(f"{app_server.url}/{path}")
    wait_idle(page)
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=shots / f"{path}.png", full_page=True)
