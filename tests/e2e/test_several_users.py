"""Several users at once: two browser contexts (two sessions) train on one server.

Runs queue for the one device; each session keeps showing its own run (in its URL and on the page),
and a Stop in one session never stops the other session's run. Runs are ResNet-18 full fine-tunes
on demo-target at 32 px: a few seconds per epoch on a 2-core CPU.
"""

import re

import pytest
from playwright.sync_api import expect

from core.store import RunStore
from tests.e2e.conftest import (
    ONE_THREAD,
    AppServer,
    open_train_small,
    start_run,
    url_run_id,
    wait_idle,
)

LONG = 180_000  # ms: generous, the machine is shared and slow


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """One server for the module's users (runs from earlier tests stay on it, as on a real server)."""
    server = AppServer(tmp_path_factory.mktemp("users"), env=ONE_THREAD).start()
    yield server
    server.stop()


def assert_shows_only(page, run_id: str, name: str, other_id: str, other_name: str) -> None:
    """The page shows run `run_id` as its run, in its URL and on the page, and nothing of the other run."""
    expect(page.get_by_role("heading", name=f"Run: {name}")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"[?&]run={run_id}(&|$)"))
    assert url_run_id(page) == run_id, page.url
    expect(page.get_by_text(f"id {run_id}")).to_be_visible()
    main = page.get_by_test_id("stMain")
    expect(main).not_to_contain_text(other_id)
    expect(main).not_to_contain_text(other_name)


def test_two_users_queue_and_each_sees_their_own_run(app_server, new_user, shots):
    alice, bob = new_user(), new_user()
    open_train_small(alice, app_server)
    open_train_small(bob, app_server)

    # about the same time: Bob presses Start as soon as Alice's run exists
    a_id = start_run(alice, name="alpha run", epochs=6)
    b_id = start_run(bob, name="bravo run", epochs=2)
    assert a_id != b_id

    # one run trains at a time: Bob's waits in the queue while Alice's trains
    expect(bob.get_by_text("Queued: position 1")).to_be_visible()
    expect(alice.get_by_test_id("stProgress")).to_contain_text(re.compile(r"Epoch \d+/6"), timeout=LONG)
    alice.screenshot(path=shots / "alice_running.png", full_page=True)
    bob.screenshot(path=shots / "bob_queued.png", full_page=True)
    assert_shows_only(bob, b_id, "bravo run", a_id, "alpha run")

    # Bob's run starts when Alice's is done, and both finish
    expect(alice.get_by_text("Freeze audit passed")).to_be_visible(timeout=LONG)
    expect(bob.get_by_text("Freeze audit passed")).to_be_visible(timeout=LONG)
    alice.wait_for_timeout(1500)  # let the charts draw
    alice.screenshot(path=shots / "alice_finished.png", full_page=True)
    bob.screenshot(path=shots / "bob_finished.png", full_page=True)
    assert_shows_only(alice, a_id, "alpha run", b_id, "bravo run")
    assert_shows_only(bob, b_id, "bravo run", a_id, "alpha run")

    # back on the Train page from another page (no run in the URL): Alice's own run, not Bob's newer one
    alice.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare").click()
    wait_idle(alice)
    alice.get_by_test_id("stSidebarNav").get_by_role("link", name="Train").click()
    wait_idle(alice)
    assert_shows_only(alice, a_id, "alpha run", b_id, "bravo run")

    store = RunStore(app_server.runs_dir)
    a, b = store.load(a_id), store.load(b_id)
    assert (a.status, b.status) == ("finished", "finished")
    assert (a.config.epochs, b.config.epochs) == (6, 2)
    assert a.owner and b.owner and a.owner != b.owner  # two sessions
    assert len(a.metrics["epochs"]) == 6 and len(b.metrics["epochs"]) == 2
    assert a.finished <= b.started  # one at a time, in the order they were started


def test_stopping_the_running_run_lets_the_queued_one_of_another_user_start(app_server, new_user, shots):
    alice, bob = new_user(), new_user()
    open_train_small(alice, app_server)
    a_id = start_run(alice, name="alpha long", epochs=200)
    expect(alice.get_by_test_id("stProgress")).to_contain_text(re.compile(r"Epoch \d+/200"), timeout=LONG)

    # Bob opens the Train page while Alice trains (it shows the newest run, Alice's), then starts his own
    open_train_small(bob, app_server)
    b_id = start_run(bob, name="bravo queued", epochs=2)
    expect(bob.get_by_text("Queued: position 1")).to_be_visible()
    bob.wait_for_timeout(1500)  # a page that jumped back to another run would have done so by now
    assert_shows_only(bob, b_id, "bravo queued", a_id, "alpha long")
    bob.screenshot(path=shots / "bob_queued_behind_alice.png", full_page=True)

    alice.get_by_role("button", name="Stop", exact=True).click()
    expect(alice.get_by_text("This run was cancelled.")).to_be_visible(timeout=60_000)
    alice.screenshot(path=shots / "alice_cancelled.png", full_page=True)

    # Bob's run was not touched: it starts now and finishes
    expect(bob.get_by_text("Freeze audit passed")).to_be_visible(timeout=LONG)
    bob.wait_for_timeout(1500)
    bob.screenshot(path=shots / "bob_finished.png", full_page=True)
    assert_shows_only(bob, b_id, "bravo queued", a_id, "alpha long")
    assert_shows_only(alice, a_id, "alpha long", b_id, "bravo queued")

    store = RunStore(app_server.runs_dir)
    a, b = store.load(a_id), store.load(b_id)
    assert (a.status, a.reason) == ("cancelled", "cancelled while training")
    assert 0 < len(a.metrics["steps"]) and len(a.metrics["epochs"]) < 200
    assert b.status == "finished" and len(b.metrics["epochs"]) == 2


def test_stopping_a_queued_run_leaves_the_other_users_running_run(app_server, new_user, shots):
    alice, bob = new_user(), new_user()
    open_train_small(bob, app_server)
    b_id = start_run(bob, name="bravo long", epochs=16)
    expect(bob.get_by_test_id("stProgress")).to_contain_text(re.compile(r"Epoch \d+/16"), timeout=LONG)

    open_train_small(alice, app_server)
    a_id = start_run(alice, name="alpha queued", epochs=2)
    expect(alice.get_by_text("Queued: position 1")).to_be_visible()
    alice.get_by_role("button", name="Stop", exact=True).click()
    expect(alice.get_by_text("This run was cancelled.")).to_be_visible(timeout=60_000)
    expect(alice.get_by_text("cancelled before it started")).to_be_visible()
    alice.screenshot(path=shots / "alice_cancelled_in_queue.png", full_page=True)
    expect(bob.get_by_test_id("stProgress")).to_be_visible()  # Bob's run goes on

    # Alice queues again from the same tab: her page now shows her new run, not the cancelled one
    c_id = start_run(alice, name="alpha again", epochs=2)
    assert c_id not in (a_id, b_id)
    expect(alice.get_by_text("Queued: position 1")).to_be_visible()
    alice.wait_for_timeout(1500)
    assert_shows_only(alice, c_id, "alpha again", b_id, "bravo long")

    expect(bob.get_by_text("Freeze audit passed")).to_be_visible(timeout=LONG)
    bob.wait_for_timeout(1500)
    bob.screenshot(path=shots / "bob_finished.png", full_page=True)
    assert_shows_only(bob, b_id, "bravo long", c_id, "alpha again")
    expect(alice.get_by_text("Freeze audit passed")).to_be_visible(timeout=LONG)
    alice.wait_for_timeout(1500)
    alice.screenshot(path=shots / "alice_second_run_finished.png", full_page=True)
    assert_shows_only(alice, c_id, "alpha again", b_id, "bravo long")

    store = RunStore(app_server.runs_dir)
    a, b, c = store.load(a_id), store.load(b_id), store.load(c_id)
    assert (a.status, a.reason) == ("cancelled", "cancelled before it started")
    assert not a.metrics["steps"]
    assert b.status == "finished" and len(b.metrics["epochs"]) == 16
    assert c.status == "finished" and c.owner == a.owner != b.owner
