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


def test_the_favicon_is_served_by_the_app_itself(app_server, page):
    """Offline use: the tab's icon comes from this server, not from a font or CDN on the internet."""
    outside = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(app_server.url) else None)
    page.goto(app_server.url)
    wait_idle(page)
    icon = page.locator("link[rel*='icon']").first
    href = icon.get_attribute("href")
    assert href and not href.startswith(("http://", "https://")) or href.startswith(app_server.url), href
    response = page.request.get(href if href.startswith("http") else f"{app_server.url}/{href.lstrip('./')}")
    assert response.ok and response.headers["content-type"].startswith("image/png")
    assert outside == [], outside
