"""The Model page in a real browser: pick a model, apply presets, tick a layer."""

from playwright.sync_api import expect

from tests.e2e.conftest import wait_idle
from tests.e2e.test_main_path import metric_value


def choose(page, label: str, option: str) -> None:
    page.get_by_test_id("stSelectbox").filter(has_text=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def fill_number(page, label: str, value: int) -> None:
    box = page.get_by_test_id("stNumberInput").filter(has_text=label).locator("input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def trainable_metric(page):
    return page.get_by_test_id("stMetric").filter(has_text="Trainable parameters").get_by_test_id("stMetricValue")


def test_vgg19_fc1_fc2_and_resnet50_last2(app_server, page, shots):
    page.goto(app_server.url)
    wait_idle(page)
    expect(page.get_by_role("heading", name="Model")).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_contain_text("CPU")

    choose(page, "Architecture", "VGG-19")
    for label, value in [("Classes", 10), ("Height", 224), ("Width", 224)]:
        fill_number(page, label, value)
    page.get_by_role("button", name="FC1 + FC2 + head").click()
    wait_idle(page)
    expect(trainable_metric(page)).to_have_text("119,586,826")
    page.screenshot(path=shots / "vgg19_fc1_fc2.png", full_page=True)
    page.get_by_role("tab", name="Cost").click()
    expect(page.get_by_text("of the compute")).to_contain_text("34%")
    page.wait_for_timeout(500)
    page.screenshot(path=shots / "vgg19_fc1_fc2_cost.png", full_page=True)
    page.get_by_role("tab", name="PyTorch code").click()
    page.wait_for_timeout(500)
    page.screenshot(path=shots / "vgg19_fc1_fc2_code.png", full_page=True)

    choose(page, "Architecture", "ResNet-50")
    page.get_by_role("button", name="Train the last 2 blocks").click()
    wait_idle(page)
    expect(trainable_metric(page)).to_have_text("22,083,594")  # layer3 + layer4 + a 10-class fc
    page.get_by_role("tab", name="Layers").click()
    page.get_by_test_id("stExpander").filter(has_text="layer3").click()
    wait_idle(page)
    page.screenshot(path=shots / "resnet50_last2.png", full_page=True)


def test_the_layer_signals_are_a_measurement_with_their_meaning_and_choose_nothing(app_server, page, shots):
    page.goto(app_server.url)
    wait_idle(page)
    for label in ("Height", "Width"):
        fill_number(page, label, 32)
    expect(metric_value(page, "Strategy")).to_have_text("Full fine-tune")
    page.get_by_role("button", name="Measure the layer signals").click()
    expect(page.get_by_text("Relative gradient norm per stage")).to_be_visible(timeout=180_000)
    wait_idle(page)
    overview = page.get_by_test_id("stDataFrame").first
    expect(overview).to_contain_text("RGN")
    expect(page.get_by_text("It is a measurement, not advice")).to_be_visible()
    expect(page.get_by_role("button", name="Train the top")).to_have_count(0)  # it points the wrong way on a label shift
    expect(metric_value(page, "Strategy")).to_have_text("Full fine-tune")  # measuring changed no choice
    page.get_by_role("tabpanel").first.screenshot(path=shots / "rgn_probe.png")
