"""Does watching a run slow it? The app, a run, and 0, 1, 3 and 6 headless Chromium viewers on it.

For each number of viewers: start `streamlit run app.py` (as a user would: its training thread count,
its config), start a run from the Train page (ResNet-18 full fine-tune on demo-target, 64 px), open
the viewers on `/train?run=<id>`, and measure while it trains:

- training images/s over epochs 2-4 (the engine's per-epoch figure; epoch 1 builds caches; from
  epoch 5 on, another user's page actions run beside it, below),
- the slowdown against no viewer,
- the CPU of the server's own process and of its training process (percent of one core),
- the update lag: the time from an epoch's record reaching the run's supervising thread (its
  `logged_at`, the moment it also goes to metrics.json) to the epoch's point showing in the first
  viewer's accuracy chart (p50 and p90 over the epochs),
  taken over epochs 2+ (the viewers open as the run starts; epoch 1 may end before a page loaded),
- every page action of another user while the run trains and the viewers watch (after epoch 4):
  opening the Train page, the Model page, applying a preset (a change of the layers that train);
  each until what it shows is there and the page is idle again.

    python bench/viewers.py            # about 6 minutes on 2 cores
    python bench/viewers.py --epochs 8 --viewers 0 3
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

ACTIONS_AFTER_EPOCH = 4  # images/s is taken over epochs 2..4; another user's page actions come after


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


def accuracy_points(page) -> int:
    chart = page.get_by_test_id("stPlotlyChart").filter(has=page.locator(".gtitle", has_text=re.compile("^Accuracy$")))
    return chart.locator("g.points path.point").count()


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
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
        wait_idle(page)

    def preset(label: str) -> None:
        page.get_by_role("button", name=label).click()
        expect(strategy).to_have_text(label)
        wait_idle(page)

    out = {
        "open Train": timed(lambda: go("Train")),
        "open Model": timed(lambda: go("Model")),
        "apply Head only": timed(lambda: preset("Head only")),
        "apply Full fine-tune": timed(lambda: preset("Full fine-tune")),
    }
    return {k: v - 0.3 for k, v in out.items()}


def measure(browser, n: int, epochs: int, workdir: Path, data_dir: Path) -> dict:
    server = AppServer(workdir / f"viewers-{n}", env={"FREEZE_LAB_DATA_DIR": str(data_dir)}).start()
    contexts = []
    try:
        def new_page():
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            contexts.append(context)
            pg = context.new_page()
            pg.set_default_timeout(120_000)
            return pg

        control = new_page()
        run_id = start_run(control, server, epochs)
        control.goto(server.url)  # the starting page leaves the run: it is no viewer
        viewers = [new_page() for _ in range(n)]
        for pg in viewers:
            pg.goto(f"{server.url}/train?run={run_id}")
        disk_seen, ui_seen, actions = {}, {}, None
        cpu0 = (time.monotonic(), cpu_seconds(server.proc.pid), None)
        worker = None
        while True:
            now = time.monotonic()
            metrics = read_metrics(server, run_id)
            done = len(metrics.get("epochs") or [])
            worker = worker or (metrics.get("info") or {}).get("worker_pid")
            if worker and cpu0[2] is None:
                cpu0 = (now, cpu_seconds(server.proc.pid), cpu_seconds(worker))
            for e, record in enumerate(metrics.get("epochs") or [], 1):
                disk_seen.setdefault(e, record["logged_at"])  # stamped when the run's thread got the record
            if viewers:
                shown = accuracy_points(viewers[0]) // 2  # a train and a validation point per epoch
                for e in range(1, shown + 1):
                    ui_seen.setdefault(e, time.time())
            if actions is None and done >= ACTIONS_AFTER_EPOCH:
                actions = page_actions(control, server)
            status = json.loads((server.runs_dir / run_id / "run.json").read_text())["status"]
            if status not in ("queued", "running") and (not viewers or len(ui_seen) >= done):
                break
            if now - cpu0[0] > 1800:
                raise TimeoutError("the run took more than 30 minutes")
            time.sleep(0.05)
        t1 = time.monotonic()
        server_cpu = (cpu_seconds(server.proc.pid) - cpu0[1]) / (t1 - cpu0[0])
        worker_cpu = (cpu_seconds(worker) - cpu0[2]) / (t1 - cpu0[0]) if cpu0[2] is not None else None
        records = read_metrics(server, run_id)["epochs"]
        later = [r["images_per_s"] for r in records[1:ACTIONS_AFTER_EPOCH]]
        # from epoch 2: the viewers open as the run starts, and epoch 1 may end before a page has loaded
        lags = [ui_seen[e] - disk_seen[e] for e in disk_seen if e in ui_seen and e >= 2]
        return {"viewers": n, "status": status, "img_s": statistics.mean(later), "server_cpu": server_cpu,
                "worker_cpu": worker_cpu, "lags": lags, "actions": actions}
    finally:
        for context in contexts:
            context.close()
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=7)
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
                results.append(measure(browser, n, args.epochs, workdir, data_dir))
        finally:
            browser.close()
    base = results[0]["img_s"]
    print(f"{os.cpu_count()} cores; ResNet-18 full fine-tune, demo-target 64 px, {args.epochs} epochs; "
          f"images/s over epochs 2-{ACTIONS_AFTER_EPOCH}\n")
    print("| viewers | train img/s | vs no viewer | server CPU | training process CPU | update lag p50 | p90 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        lags = sorted(r["lags"])
        p50 = f"{statistics.median(lags):.2f} s" if lags else "–"
        p90 = f"{lags[max(0, round(0.9 * len(lags)) - 1)]:.2f} s" if lags else "–"
        worker = f"{r['worker_cpu']:.0%}" if r["worker_cpu"] is not None else "–"
        print(f"| {r['viewers']} | {r['img_s']:.1f} | {r['img_s'] / base:.0%} | {r['server_cpu']:.0%} | {worker} "
              f"| {p50} | {p90} |")
    names = list(results[0]["actions"] or {})
    print("\nPage actions of another user while the run trains and the viewers watch (seconds, until idle):\n")
    print("| viewers | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in results:
        print(f"| {r['viewers']} | " + " | ".join(f"{(r['actions'] or {}).get(k, float('nan')):.2f}" for k in names) + " |")


if __name__ == "__main__":
    main()
