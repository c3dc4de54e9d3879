"""The main path in a real browser, as a new user walks it (issue 7).

Open the app; pick ResNet-18 (random init: no ImageNet download offline) and the
demo dataset at a small input size; tick a layer and see the counts change;
apply a preset; start a run; see the live chart grow; let it finish; classify
an uploaded image with the run; start a second run with another strategy;
compare both. One numbered full-page screenshot per step goes to
tests/screenshots/test_main_path/.

Expected numbers come from `core` (the same layer tree the Model page counts
with), so the test checks the page's arithmetic rather than repeating it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from playwright.sync_api import Locator, Page, expect

from core.data import demo
from core.freezing import model_structure, preset_frozen
from core.models import build_skeleton
from core.store import RunStore
from tests.e2e.conftest import ONE_THREAD, AppServer, wait_idle

ARCH, CLASSES, SIZE = "resnet18", 4, 32  # demo-target has 4 classes; 32 px keeps a CPU epoch near a second
TARGET_CLASSES = demo.WORLDS["demo-target"][0]  # pentagon, diamond, star4, tshape
EPOCHS_FULL, EPOCHS_HEAD = 8, 4  # the first run is long enough to be watched live
LIVE = 120_000  # ms: generous waits for anything that trains (the machine is shared and slow)

# Glide data grid (st.data_editor) geometry, as in Streamlit's own e2e helpers
# (e2e_playwright/shared/dataframe_utils.py): the header and every row are 35 px tall.
ROW_HEIGHT_PX = 35
VIEWPORT_HEIGHT = 2400  # px: the Train page with its four charts fits


# --------------------------------------------------------------------------- helpers


def nav(page: Page, name: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
    wait_idle(page)
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()


def choose(page: Page, label: str, option: str) -> None:
    page.get_by_test_id("stSelectbox").filter(has_text=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def fill_number(page: Page, label: str, value: int) -> None:
    box = page.get_by_test_id("stNumberInput").filter(has_text=label).locator("input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def block_expander(page: Page, name: str) -> Locator:
    """The expander of one block of the layer tree, by its label ("layer1 — ● trains · …")."""
    return page.get_by_test_id("stExpander").filter(
        has=page.locator("summary [data-testid='stMarkdownContainer']",
                         has_text=re.compile(rf"^{re.escape(name)} — ")))


def metric_value(page: Page, label: str) -> Locator:
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")


def toggle_tree_row(page: Page, table: Locator, column: str, value: str) -> None:
    """Toggle the "Train" checkbox of the row whose `column` reads `value` in a layer-tree table
    (st.data_editor; the overview names rows in "layer", a block's table in "path").

    The grid is drawn on a <canvas>, so there is no DOM checkbox to click, and
    the drawn checkbox's centre depends on column widths computed in the
    browser (the table stretches to the page). What is stable:
    - glide-data-grid keeps an accessible <table> inside the canvas whose cells
      carry `data-testid="glide-cell-<col>-<row>"`, their text ("true"/"false"
      for a checkbox) and `aria-selected`: it tells which row holds `value`;
    - every row is 35 px tall below a 35 px header (as in Streamlit's own e2e
      helpers), and "Train" is the first column (the index is hidden).
    So: click at the left edge of that row's first cell, which selects the cell
    without toggling it; check through `aria-selected` that exactly that cell
    got selected (retrying the click if the layout was still moving); then
    press Space, which toggles a selected checkbox cell in glide-data-grid.
    """
    expect(table.locator("thead th").filter(has_text=re.compile(rf"^{re.escape(column)}$"))).to_have_count(1)
    headers = [t.strip() for t in table.locator("thead th").all_text_contents()]
    col = headers.index(column) + 1  # aria-colindex counts from 1
    row = int(table.locator(f"td[aria-colindex='{col}']").filter(has_text=re.compile(rf"^{re.escape(value)}$"))
              .get_attribute("data-testid").rsplit("-", 1)[1])
    cell = table.get_by_test_id(f"glide-cell-0-{row}")
    y = ROW_HEIGHT_PX * (row + 1) + ROW_HEIGHT_PX // 2
    for attempt in range(3):
        # the scroller above the canvas takes the pointer events: click the element, as Streamlit's helpers do
        table.click(position={"x": 6, "y": y})
        try:
            expect(cell).to_have_attribute("aria-selected", "true", timeout=5_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    page.keyboard.press("Space")
    wait_idle(page)


def grid_rows(table: Locator) -> list[dict[str, str]]:
    """The rows of a grid as {column header: cell text}, read from the accessible <table> that
    glide-data-grid keeps inside its canvas (raw values: 0.53125, not the drawn "53.12%")."""
    headers = [t.strip() for t in table.locator("thead th").all_text_contents()]
    return [dict(zip(headers, (t.strip() for t in row.locator("td").all_text_contents())))
            for row in table.locator("tbody tr").all()]


def progress_epoch(page: Page) -> int:
    return int(re.search(r"Epoch (\d+)/", page.get_by_test_id("stProgress").inner_text()).group(1))


def epochs_after(e: int, total: int) -> re.Pattern:
    """'Epoch k/total' for any k > e."""
    return re.compile(rf"Epoch ({'|'.join(str(k) for k in range(e + 1, total + 1))})/{total}\b")


def snap(page: Page, path) -> None:
    """A full-page screenshot that really holds the whole page.

    Streamlit scrolls inside its main section (`stMain`), not the document, so
    `full_page=True` alone stops at the viewport and cuts off what is below it.
    The viewport of this test is tall enough for most pages (see `page`); for a
    longer one (Compare) it grows to the section's height for the shot."""
    size = page.viewport_size
    page.mouse.move(size["width"] - 5, size["height"] - 5)  # no hover tooltip over the page
    height = int(page.get_by_test_id("stMain").evaluate("e => e.scrollHeight")) + 20
    if height <= size["height"]:
        page.screenshot(path=path, full_page=True)
        return
    page.set_viewport_size({"width": size["width"], "height": min(height, 10_000)})
    page.wait_for_timeout(500)  # let the charts lay out in the taller window
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size(size)


def plotly_chart(page: Page, title: str) -> Locator:
    """The plotly chart whose title is exactly `title`."""
    return page.get_by_test_id("stPlotlyChart").filter(
        has=page.locator(".gtitle", has_text=re.compile(rf"^{re.escape(title)}$")))


def set_epochs(page: Page, epochs: int) -> None:
    field = page.get_by_test_id("stNumberInput").filter(has_text="Epochs").locator("input")
    field.fill(str(epochs))  # inside the form: nothing reruns until it is submitted
    field.blur()  # (and no "Press Enter to submit form" hint over the value in the screenshot)
    expect(field).to_have_value(str(epochs))


def start_run(page: Page, store: RunStore) -> str:
    """Start a run from the Train page's form; return its id (from the URL).

    The Train page puts the run it shows into the URL, and right after a page
    switch that may still be an earlier run: wait for an id that is new."""
    known = "|".join(re.escape(r.id) for r in store.list())
    new_id = re.compile(rf"[?&]run=(?!(?:{known})\b)([\w-]+)" if known else r"[?&]run=([\w-]+)")
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(new_id, timeout=60_000)
    return new_id.search(page.url).group(1)


def wait_finished(page: Page, run_id: str) -> str:
    """Wait for the run to finish with a passed freeze audit; return the validation accuracy shown (of the
    weights the run kept) and check that a test accuracy is shown beside it."""
    expect(page.get_by_text(f"id {run_id} · finished")).to_be_visible(timeout=LIVE)
    expect(page.get_by_text("Freeze audit passed")).to_be_visible(timeout=LIVE)
    expect(page.get_by_test_id("stProgress")).to_have_count(0)
    expect(page.get_by_role("button", name="Stop", exact=True)).to_have_count(0)
    acc = metric_value(page, "Validation accuracy")
    expect(acc).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
    expect(metric_value(page, "Test accuracy")).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
    return acc.inner_text()


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """conftest's server, with torch on one CPU thread. On this shared 2-core machine two OpenMP
    threads per process wait on each other whenever other processes hold the cores: an epoch of
    the first run took 0.4 s alone and 9-17 s while other test suites ran; one thread avoids that."""
    server = AppServer(tmp_path_factory.mktemp("app"), env=ONE_THREAD).start()
    yield server
    server.stop()


@pytest.fixture
def page(browser):
    """conftest's page, with a window tall enough that a screenshot shows the Train page's
    charts while the run is live (the shot cannot wait for a resize then)."""
    context = browser.new_context(viewport={"width": 1400, "height": VIEWPORT_HEIGHT})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def test_main_path(app_server, page, shots, tmp_path):
    tree, _ = model_structure(ARCH, CLASSES, (SIZE, SIZE))
    total = tree.total
    store = RunStore(app_server.workdir / "runs")  # the server's own runs directory

    # 01: open the app: the Model page, with the compute device in the sidebar
    page.goto(app_server.url)
    wait_idle(page)
    expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Compute device")
    expect(page.get_by_test_id("stException")).to_have_count(0)
    snap(page, shots / "01_open.png")

    # 02: the demo dataset (drawn on this machine, no download)
    nav(page, "Data")
    page.get_by_test_id("stRadio").get_by_text("Demo target (4 shapes, few images)").click()
    wait_idle(page)
    expect(page.get_by_test_id("stAlertContentSuccess")).to_contain_text(
        f"The run uses demo-target: {CLASSES} classes", timeout=LIVE)
    expect(metric_value(page, "Classes")).to_have_text(str(CLASSES))
    for name in TARGET_CLASSES:
        expect(page.get_by_test_id("stMarkdownContainer").filter(has_text=re.compile(rf"^{name}$"))).to_be_visible()
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    snap(page, shots / "02_data_demo_target.png")

    # 03: ResNet-18, random init (offline), a small input size
    nav(page, "Model")
    choose(page, "Architecture", "ResNet-18")
    choose(page, "Weights", "None (random init)")
    expect(page.get_by_test_id("stNumberInput").filter(has_text="Classes").locator("input")).to_have_value(str(CLASSES))
    fill_number(page, "Height", SIZE)
    fill_number(page, "Width", SIZE)
    expect(metric_value(page, "Trainable parameters")).to_have_text(f"{total:,}")
    expect(metric_value(page, "Frozen parameters")).to_have_text("0")
    overview = page.get_by_test_id("stDataFrame").first
    expect(overview).to_be_visible()
    # the output shapes follow the input size: at 32 px the stem (conv1, maxpool) gives 64x8x8
    # (columns: train, state, layer, modules, output)
    expect(overview.locator("td[aria-colindex='5']").first).to_have_text(f"64×{SIZE // 4}×{SIZE // 4}")
    snap(page, shots / "03_model_resnet18_32px.png")

    # 04: tick a layer: untick layer1 in the overview -> exactly its parameters freeze
    layer1 = tree.node("layer1").total_params
    trainable, frozen = tree.counts(("layer1",))
    assert (trainable, frozen) == (total - layer1, layer1)
    expect(overview.get_by_test_id("glide-cell-0-1")).to_have_text("true")  # row 1 is layer1, ticked
    toggle_tree_row(page, overview, "layer", "layer1")
    expect(overview.get_by_test_id("glide-cell-0-1")).to_have_text("false")
    expect(metric_value(page, "Trainable parameters")).to_have_text(f"{trainable:,}")
    expect(metric_value(page, "Frozen parameters")).to_have_text(f"{frozen:,}")
    expect(metric_value(page, "Strategy")).to_have_text("Custom")
    expect(block_expander(page, "layer1")).to_contain_text(
        f"layer1 — ○ frozen · 0 / {layer1:,} trainable")
    snap(page, shots / "04_untick_layer1.png")

    # 05: tick a single block back inside layer1's own table: layer1.0 trains, layer1.1 stays frozen
    frozen_set = tree.with_node(("layer1",), "layer1.0", train=True)
    trainable, frozen = tree.counts(frozen_set)
    block = tree.node("layer1.0").total_params
    assert (trainable, frozen) == (total - layer1 + block, layer1 - block)
    expander = block_expander(page, "layer1")
    expander.locator("summary").click()
    group = expander.get_by_test_id("stDataFrame")
    expect(group).to_be_visible()
    toggle_tree_row(page, group, "path", "layer1.0")
    expect(metric_value(page, "Trainable parameters")).to_have_text(f"{trainable:,}")
    expect(metric_value(page, "Frozen parameters")).to_have_text(f"{frozen:,}")
    expect(expander).to_contain_text(f"layer1 — ◐ partly · {block:,} / {layer1:,} trainable")
    # the block stays open although its label changed with the counts (the page remembers it), and the
    # grid of the previous script run is gone
    expect(group).to_have_count(1)
    expect(group).to_be_visible()
    expect(group.get_by_test_id("glide-cell-0-1")).to_be_attached()
    # The block stays open (its expander has a stable key), and its grid is redrawn for the new
    # choice a moment after the counts: read it until it shows the new states.
    for _ in range(40):
        states = {row["path"]: (row["Train"], row["state"]) for row in grid_rows(group)}
        if states.get("layer1") == ("false", "◐ partly"):
            break
        page.wait_for_timeout(250)
    assert states["layer1"] == ("false", "◐ partly"), states
    assert states["layer1.0"] == ("true", "● trains") and states["layer1.0.conv1"] == ("true", "● trains"), states
    assert states["layer1.1"] == ("false", "○ frozen"), states
    snap(page, shots / "05_tick_layer1_0.png")

    # 06: apply a preset: "Full fine-tune" trains everything again
    page.get_by_role("button", name="Full fine-tune").click()
    wait_idle(page)
    expect(metric_value(page, "Trainable parameters")).to_have_text(f"{total:,}")
    expect(metric_value(page, "Frozen parameters")).to_have_text("0")
    expect(metric_value(page, "Strategy")).to_have_text("Full fine-tune")
    expect(block_expander(page, "layer1")).to_contain_text(
        f"layer1 — ● trains · {layer1:,} / {layer1:,} trainable")
    snap(page, shots / "06_preset_full.png")

    # 07: the Train page shows that choice; start the run
    nav(page, "Train")
    expect(metric_value(page, "Model")).to_have_text("ResNet-18")
    expect(metric_value(page, "Strategy")).to_have_text("Full fine-tune")
    expect(metric_value(page, "Dataset")).to_have_text("demo-target")
    expect(metric_value(page, "Input")).to_have_text(f"{SIZE}×{SIZE}")
    set_epochs(page, EPOCHS_FULL)
    snap(page, shots / "07_train_form.png")
    run_full = start_run(page, store)

    # 08 + 09: live, the accuracy chart grows while the progress bar counts epochs
    progress = page.get_by_test_id("stProgress")
    points = plotly_chart(page, "Accuracy").locator("g.points path.point")  # one per epoch and curve
    expect(progress).to_contain_text(epochs_after(1, EPOCHS_FULL), timeout=LIVE)  # an epoch is done
    expect(points.nth(1)).to_be_attached(timeout=LIVE)  # train and validation points of that epoch
    e1, n1 = progress_epoch(page), points.count()
    snap(page, shots / "08_training_live.png")
    expect(progress).to_contain_text(epochs_after(e1, EPOCHS_FULL), timeout=LIVE)
    e2 = progress_epoch(page)
    expect(points.nth(n1)).to_be_attached(timeout=LIVE)  # more points than at the first moment
    # Read the count until it shows them: the live fragment redraws the chart, and a count taken
    # during a redraw once read the old number right after the new point had been seen.
    for _ in range(40):
        n2 = points.count()
        if n2 > n1:
            break
        page.wait_for_timeout(250)
    assert e2 > e1 and n2 > n1, (e1, n1, e2, n2)
    snap(page, shots / "09_training_live_later.png")

    # 10: it finishes: the freeze audit passed, one point per epoch and curve
    acc_full = wait_finished(page, run_full)
    expect(points).to_have_count(2 * EPOCHS_FULL)
    record_full = store.load(run_full)
    assert record_full.status == "finished" and len(record_full.metrics["epochs"]) == EPOCHS_FULL
    assert acc_full == f"{record_full.summary.val_acc:.1%}"  # the kept (best) epoch's
    assert record_full.summary.val_acc == max(e["val_acc"] for e in record_full.metrics["epochs"])
    expect(metric_value(page, "Test accuracy")).to_have_text(f"{record_full.summary.test_acc:.1%}")
    page.wait_for_timeout(1000)  # let plotly finish drawing the last frame for the screenshot
    snap(page, shots / "10_train_finished.png")

    # 11: classify an uploaded image (a star4 drawn by the demo generator) with that run
    image = tmp_path / "my_star4.png"
    demo.draw_image(np.random.default_rng(1234), "star4").resize((96, 96)).save(image)
    nav(page, "Classify")
    expect(page.get_by_test_id("stMultiSelect").filter(has_text="Runs")).to_contain_text(record_full.name)
    with page.expect_file_chooser() as chooser:
        page.get_by_test_id("stFileUploaderDropzone").click()
    chooser.value.set_files(image)
    wait_idle(page)
    fill_number(page, "Top k", CLASSES)  # every class: the probabilities add up to 100%
    bars = plotly_chart(page, record_full.name)
    expect(bars).to_have_count(1, timeout=LIVE)
    expect(page.get_by_test_id("stImage").filter(has_text="my_star4.png")).to_be_visible()
    for name in TARGET_CLASSES:
        expect(bars.locator(".ytick", has_text=re.compile(rf"^{name}$"))).to_have_count(1)
    texts = bars.locator(".bartext")
    expect(texts).to_have_count(CLASSES)
    probs = [float(t.rstrip("%")) for t in texts.all_text_contents()]
    assert all(0 <= p <= 100 for p in probs) and abs(sum(probs) - 100) < 0.5, probs
    expect(page.get_by_text(f"Top-{CLASSES} classes with softmax probabilities; 1 image(s), 1 model(s).")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.wait_for_timeout(500)
    snap(page, shots / "11_classify.png")

    # 12: a second run with another strategy: head only (the feature extractor)
    nav(page, "Model")
    page.get_by_role("button", name="Head only").click()
    wait_idle(page)
    head_trainable, _ = tree.counts(preset_frozen(build_skeleton(ARCH, CLASSES), ARCH, "head"))
    assert head_trainable == 512 * CLASSES + CLASSES  # fc of ResNet-18: weight and bias
    expect(metric_value(page, "Trainable parameters")).to_have_text(f"{head_trainable:,}")
    expect(metric_value(page, "Strategy")).to_have_text("Head only")
    snap(page, shots / "12_preset_head.png")

    nav(page, "Train")
    expect(metric_value(page, "Strategy")).to_have_text("Head only")
    set_epochs(page, EPOCHS_HEAD)
    run_head = start_run(page, store)
    assert run_head != run_full
    acc_head = wait_finished(page, run_head)
    record_head = store.load(run_head)
    assert record_head.config.preset == "head" and len(record_head.metrics["epochs"]) == EPOCHS_HEAD
    assert acc_head == f"{record_head.summary.val_acc:.1%}"
    expect(metric_value(page, "Test accuracy")).to_have_text(f"{record_head.summary.test_acc:.1%}")
    frozen_tensors = int(re.search(r"Freeze audit passed: (\d+) frozen tensors",
                                   page.get_by_text("Freeze audit passed").inner_text()).group(1))
    assert frozen_tensors > 0  # head only: the whole trunk is checked bit for bit
    page.wait_for_timeout(1000)
    snap(page, shots / "13_train_head_finished.png")

    # 14: compare both: names, strategies, trainable parameters and best accuracy side by side
    nav(page, "Compare")
    chosen = page.get_by_test_id("stMultiSelect").filter(has_text="Runs to compare")
    expect(chosen).to_contain_text(record_full.name)
    expect(chosen).to_contain_text(record_head.name)
    table = page.get_by_test_id("stDataFrame").nth(1)  # [0] is inside the collapsed "All runs" expander
    expect(table.locator("tbody tr")).to_have_count(2)
    rows = {row["run"]: row for row in grid_rows(table)}
    assert set(rows) == {record_full.name, record_head.name}, rows
    for record, strategy, params in [(record_full, "Full fine-tune", total), (record_head, "Head only", head_trainable)]:
        row = rows[record.name]
        assert (row["status"], row["arch"], row["strategy"]) == ("finished", ARCH, strategy), row
        assert int(row["trainable"]) == params, row  # the "trainable params" column, headed "trainable"
        assert float(row["val acc"]) == max(e["val_acc"] for e in record.metrics["epochs"]), row  # the kept epoch
        assert float(row["test acc"]) == record.summary.test_acc, row
    for title in ("Validation accuracy per epoch", "Test accuracy vs trainable parameters"):
        chart = plotly_chart(page, title)
        expect(chart.locator(".legendtext", has_text=record_full.name)).to_have_count(1)
        expect(chart.locator(".legendtext", has_text=record_head.name)).to_have_count(1)
    curve = plotly_chart(page, "Validation accuracy per epoch").locator("g.points path.point")
    expect(curve).to_have_count(EPOCHS_FULL + EPOCHS_HEAD)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.wait_for_timeout(1000)
    snap(page, shots / "14_compare.png")
