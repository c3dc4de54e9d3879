"""Does watching a run slow it? The app, a run, and 0, 1, 3 and 6 headless Chromium viewers on it.

For each number of viewers: start `streamlit run app.py` (as a user would: its training thread count,
its config), start a long run from the Train page (ResNet-18 full fine-tune on demo-target, 64 px),
open the viewers on `/train?run=<id>`, wait until every one of them shows the live run, and measure:

- training images/s over the first 6 epochs that start after that (the engine's per-epoch figure;
  never epoch 1, which builds caches), and the slowdown against no viewer,
- the CPU of the server's own process and of its training process over those epochs (percent of one core),
- every page action of another user after those epochs, while the run trains and the viewers watch:
  opening the Train page, the Model page, applying a preset (a change of the layers that train),
  ticking one layer in the layer tree, opening the Train page again;
  each until what it shows is there and the page is idle again,
- the update lag of every epoch that ended once the viewers watched, up to two epochs after the page
  actions: the time from the epoch's record reaching the run's supervising thread (its `logged_at`,
  the moment it also goes to metrics.json) to the epoch's point showing in the first viewer's
  accuracy chart, as that page itself saw it (checked every 0.1 s); p50 and p90.

The run is ended with its server once measured.

    python bench/viewers.py            # about 7 minutes on 2 cores
    python bench/viewers.py --viewers 0 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.e2e.conftest import CHROMIUM_ARGS, AppServer, wait_idle  # noqa: E402
from tests.e2e.test_main_path import toggle_tree_row  # noqa: E402

WATCHED_EPOCHS = 6  # images/s over the first six epochs that start once every viewer shows the run
WAIT_MS = 120_000  # for what a page shows: slow under six viewers is a result, not a failure
RUN_EPOCHS = 500  # more than the bench waits for: it ends the run with the server once it has measured


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def read_metrics(server: AppServer, run_id: str) -> dict:
    try:
        return json.loads((server.runs_dir / run_id / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def start_run(page, server: AppServer, epochs: int) -> str:
    page.goto(server.url)
    wait_idle(page)
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Train").click()
    wait_idle(page)
    page.get_by_test_id("stNumberInput").filter(has_text="Epochs").locator("input").fill(str(epochs))
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"[?&]run=\d{8}-\d{6}-[0-9a-f]{4}"), timeout=60_000)
    return re.search(r"run=(\d{8}-\d{6}-[0-9a-f]{4})", page.url).group(1)


# In the first viewer's page: every 0.1 s, the wall-clock time at which each epoch's point first shows
# in the accuracy chart (a train and a validation point per epoch). Stamped by the page itself, so a
# bench loop busy with another user's page actions cannot make the lag look longer than it was.
EPOCH_STAMPER = """
window.__epochShown = {};
setInterval(() => {
  for (const chart of document.querySelectorAll("[data-testid='stPlotlyChart']")) {
    const title = chart.querySelector(".gtitle");
    if (!title || title.textContent !== "Accuracy") continue;
    const epochs = Math.floor(chart.querySelectorAll("g.points path.point").length / 2);
    for (let e = 1; e <= epochs; e++) if (!(e in window.__epochShown)) window.__epochShown[e] = Date.now() / 1000;
  }
}, 100);
"""


def epochs_shown(page) -> dict[int, float]:
    """Epoch -> the time (time.time()) its point first showed in the page's accuracy chart."""
    return {int(e): t for e, t in page.evaluate("() => window.__epochShown || {}").items()}


def timed(action) -> float:
    t = time.monotonic()
    action()
    return time.monotonic() - t


def page_actions(page, server: AppServer) -> dict[str, float]:
    """Another user's page actions while the run trains: each until what it shows is there and the
    page is idle again (wait_idle's own settling pause of 0.3 s is not counted)."""
    page.goto(server.url)
    wait_idle(page)
    nav = page.get_by_test_id("stSidebarNav")
    strategy = page.get_by_test_id("stMetric").filter(has_text="Strategy").get_by_test_id("stMetricValue")

    def go(name: str) -> None:
        nav.get_by_role("link", name=name).click()
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible(timeout=WAIT_MS)
        if name == "Train":  # the live run's charts draw after the script run has ended: wait for them too
            expect(page.locator("[data-testid='stPlotlyChart'] .gtitle")).to_have_count(2, timeout=WAIT_MS)
        wait_idle(page)

    def preset(label: str) -> None:
        page.get_by_role("button", name=label).click()
        expect(strategy).to_have_text(label, timeout=WAIT_MS)
        wait_idle(page)

    def tick_layer() -> None:  # untick layer1 in the layer tree's overview: the strategy becomes Custom
        toggle_tree_row(page, page.get_by_test_id("stDataFrame").first, "layer", "layer1")  # waits idle
        expect(strategy).to_have_text("Custom", timeout=WAIT_MS)
        wait_idle(page)

    out = {
        "open Train": timed(lambda: go("Train")),
        "open Model": timed(lambda: go("Model")),
        "apply Head only": timed(lambda: preset("Head only")),
        "apply Full fine-tune": timed(lambda: preset("Full fine-tune")),
        "tick a layer": timed(tick_layer) - 0.3,  # (two settling pauses)
        # the first opening was the tab's first Plotly chart since its page load: Streamlit loads its
        # Plotly code then (about 2 s with no viewer here); a second opening shows the page's own cost
        "open Train again": timed(lambda: go("Train")),
    }
    return {k: v - 0.3 for k, v in out.items()}


def wait_for(predicate, server: AppServer, run_id: str, timeout: float = 900) -> list[dict]:
    """Poll the run's epoch records until `predicate(records)` holds; return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = read_metrics(server, run_id).get("epochs") or []
        if predicate(records):
            return records
        time.sleep(0.2)
    raise TimeoutError(f"the run's epochs did not come within {timeout:.0f} s")


def measure(browser, n: int, workdir: Path, data_dir: Path) -> dict:
    server = AppServer(workdir / f"viewers-{n}", env={"FREEZE_LAB_DATA_DIR": str(data_dir)}).start()
    contexts = []
    try:
        def new_page():
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            contexts.append(context)
            pg = context.new_page()
            pg.set_default_timeout(300_000)
            return pg

        control = new_page()
        run_id = start_run(control, server, RUN_EPOCHS)
        control.goto(server.url)  # the starting page leaves the run: it is no viewer
        viewers = [new_page() for _ in range(n)]
        if viewers:
            viewers[0].add_init_script(EPOCH_STAMPER)
        for pg in viewers:
            pg.goto(f"{server.url}/train?run={run_id}")
        for pg in viewers:  # every viewer shows the live run (six pages load slowly on two busy cores)
            expect(pg.get_by_role("button", name="Stop")).to_be_visible(timeout=300_000)
        while not (worker := (read_metrics(server, run_id).get("info") or {}).get("worker_pid")):
            time.sleep(0.2)  # the run has started in the training process
        ready = time.time()
        cpu0 = (time.monotonic(), cpu_seconds(server.proc.pid), cpu_seconds(worker))

        def watched(records):  # epochs 2+ that started once every viewer watched (epoch 1 builds caches)
            return [r for prev, r in zip(records, records[1:]) if prev["logged_at"] >= ready]

        records = wait_for(lambda rs: len(watched(rs)) >= WATCHED_EPOCHS, server, run_id)
        t1 = time.monotonic()
        server_cpu = (cpu_seconds(server.proc.pid) - cpu0[1]) / (t1 - cpu0[0])
        worker_cpu = (cpu_seconds(worker) - cpu0[2]) / (t1 - cpu0[0])
        img_s = statistics.mean(r["images_per_s"] for r in watched(records)[:WATCHED_EPOCHS])
        actions = page_actions(control, server)
        done = time.time()
        records = wait_for(lambda rs: sum(r["logged_at"] > done for r in rs) >= 2, server, run_id)
        time.sleep(3)  # the last epoch reaches the viewer's chart
        shown = epochs_shown(viewers[0]) if viewers else {}
        lags = [shown[e] - r["logged_at"] for e, r in enumerate(records, 1) if r["logged_at"] >= ready and e in shown]
        missed = sum(1 for e, r in enumerate(records, 1) if r["logged_at"] >= ready and e not in shown) if viewers else 0
        return {"viewers": n, "img_s": img_s, "server_cpu": server_cpu, "worker_cpu": worker_cpu, "lags": lags,
                "missed": missed, "actions": actions}
    finally:
        for context in contexts:
            context.close()
        server.stop()  # the run ends with the server (interrupted): everything was measured


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", type=int, nargs="+", default=[0, 1, 3, 6])
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="freeze-lab-viewers-"))
    data_dir = workdir / "data"  # shared: the demo world is drawn once
    results = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
        try:
            for n in args.viewers:
                print(f"{n} viewers …", file=sys.stderr, flush=True)
                results.append(measure(browser, n, workdir, data_dir))
        finally:
            browser.close()
    base = results[0]["img_s"]
    print(f"{os.cpu_count()} cores; ResNet-18 full fine-tune, demo-target 64 px; images/s and CPU over the first "
          f"{WATCHED_EPOCHS} epochs that start once every viewer shows the run\n")
    print("| viewers | train img/s | vs no viewer | server CPU | training process CPU | update lag p50 | p90 | epochs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        lags = sorted(r["lags"])
        p50 = f"{statistics.median(lags):.2f} s" if lags else "–"
        p90 = f"{lags[max(0, round(0.9 * len(lags)) - 1)]:.2f} s" if lags else "–"
        epochs = f"{len(lags)}" + (f" ({r['missed']} never shown)" if r["missed"] else "") if r["viewers"] else "–"
        print(f"| {r['viewers']} | {r['img_s']:.1f} | {r['img_s'] / base:.0%} | {r['server_cpu']:.0%} "
              f"| {r['worker_cpu']:.0%} | {p50} | {p90} | {epochs} |")
    names = list(results[0]["actions"] or {})
    print("\nPage actions of another user while the run trains and the viewers watch (seconds, until idle):\n")
    print("| viewers | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in results:
        print(f"| {r['viewers']} | " + " | ".join(f"{(r['actions'] or {}).get(k, float('nan')):.2f}" for k in names) + " |")


if __name__ == "__main__":
    main()
