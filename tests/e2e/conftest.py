"""Browser end-to-end fixtures: a real `streamlit run app.py` and headless Debian Chromium.

Follows Streamlit's own e2e setup: start the server on a free port, poll
`/_stcore/health`, then wait until the app's script has finished running.
Screenshots go to tests/screenshots/<test name>/ (ignored by git).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "tests" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def pytest_collection_modifyitems(items):
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


# Environment for servers whose tests train several runs: torch on one CPU thread. On a shared 2-core
# machine, two OpenMP threads per process wait on each other at every parallel region when other
# processes hold the cores (a 32 px epoch measured 0.5 s alone, 15-40 s under load; one thread: ~1 s).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """One `streamlit run app.py` process with its own runs and data directories.

    The directories are `workdir/runs` and `workdir/data`; they may already exist: a second
    `AppServer` on the same `workdir` is the same app restarted (it gets a new port), e.g.
    after `kill()`.
    """

    def __init__(self, workdir: Path, env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runs_dir = self.workdir / "runs"
        self.data_dir = self.workdir / "data"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FREEZE_LAB_RUNS_DIR": str(self.runs_dir),
                    "FREEZE_LAB_DATA_DIR": str(self.data_dir), **(env or {})}
        self.proc = None

    def start(self, timeout: float = 60) -> AppServer:
        with open(self.workdir / f"streamlit-{self.port}.log", "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                 "--server.port", str(self.port), "--server.fileWatcherType", "none",
                 "--browser.gatherUsageStats", "false"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"streamlit did not come up; see {log.name}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """End the server at once with SIGKILL, like a crash: nothing of it gets to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    server = AppServer(tmp_path_factory.mktemp("app")).start()
    yield server
    server.stop()


SYSTEM_CHROMIUMS = ("chromium", "chromium-browser", "google-chrome")
NO_BROWSER = ("No Chromium for the browser tests: install your system's (Debian: apt-get install chromium) "
              "or Playwright's own (python -m playwright install chromium).")


def launch_chromium(playwright):
    """Headless Chromium: the system's when there is one (CI installs Debian's), else Playwright's own;
    `RuntimeError(NO_BROWSER)` when neither is there."""
    executable = next((path for name in SYSTEM_CHROMIUMS if (path := shutil.which(name))), None)
    try:
        return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:
        if executable is None and "Executable doesn't exist" in str(exc):
            raise RuntimeError(NO_BROWSER) from None
        raise


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            b = launch_chromium(p)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


@pytest.fixture
def new_user(browser):
    """A factory of pages, each in its own browser context: a separate user with their own session."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1400, "height": 1400})
        contexts.append(context)
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        return pg

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def shots(request) -> Path:
    folder = SHOTS / request.node.name.replace("[", "_").replace("]", "")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_idle(page) -> None:
    """Wait until the app's script run has finished (Streamlit's own e2e idiom)."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    page.wait_for_timeout(300)


# --- the Train page ---------------------------------------------------------------------------


def open_train(page, server: AppServer, run_id: str | None = None) -> None:
    """Open the Train page (of one run, by its URL, if `run_id` is given) and wait until it is drawn."""
    page.goto(f"{server.url}/train" + (f"?run={run_id}" if run_id else ""))
    wait_idle(page)


def open_train_small(page, server: AppServer, size: int = 32) -> None:
    """A new session: set the input size on the Model page (ResNet-18, random init, full fine-tune on
    demo-target are its defaults; `size` px keeps runs short on a CPU), then go to the Train page
    through the sidebar (a `goto` would start a new session and lose the choice)."""
    from playwright.sync_api import expect

    page.goto(server.url)
    wait_idle(page)
    for label in ("Height", "Width"):
        box = page.get_by_test_id("stNumberInput").filter(has_text=label).locator("input")
        box.fill(str(size))
        box.press("Enter")
        expect(box).to_have_value(str(size))
        wait_idle(page)
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Train").click()
    wait_idle(page)
    expect(page.get_by_test_id("stMetric").filter(has_text="Input")).to_contain_text(f"{size}×{size}")


def url_run_id(page) -> str | None:
    """The run id in the page's URL (`?run=`), or None."""
    from urllib.parse import parse_qs, urlparse

    return (parse_qs(urlparse(page.url).query).get("run") or [None])[0]


def start_run(page, *, name: str, epochs: int, batch_size: int | None = None) -> str:
    """Fill the Train page's form with a run name and a number of epochs, start the run, wait until
    the page shows it, and return its id (from the URL)."""
    from playwright.sync_api import expect

    page.get_by_test_id("stNumberInput").filter(has_text="Epochs").locator("input").fill(str(epochs))
    if batch_size is not None:
        page.get_by_test_id("stNumberInput").filter(has_text="Batch size").locator("input").fill(str(batch_size))
    page.get_by_test_id("stTextInput").filter(has_text="Run name").locator("input").fill(name)
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("heading", name=f"Run: {name}")).to_be_visible(timeout=60_000)
    # the id shown under the heading (`id <run id> · status`); the URL may follow a moment later
    shown = page.locator("code").filter(has_text=re.compile(r"^\s*\d{8}-\d{6}-[0-9a-f]{4}\s*$"))
    expect(shown).to_have_count(1)
    run_id = shown.inner_text().strip()
    expect(page).to_have_url(re.compile(rf"[?&]run={run_id}(&|$)"))
    return run_id
