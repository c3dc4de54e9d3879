"""AppTest for the Sweep page: plan a sweep from the draft, run a tiny one to its answer, apply it."""

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.store import FINISHED, SweepStore
from core.sweeps import sweep_state
from tests.test_page_train import _isolated  # noqa: F401  (an autouse fixture: this test's runs and data)
from tests.test_training import draw_folder
from ui.services import get_manager

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "sweep.py")
TIMEOUT = 120


@pytest.fixture
def folder(tmp_path_factory):
    return draw_folder(tmp_path_factory.mktemp("shapes"), per_class=8)


def page_with(draft: RunConfig) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["owner"] = "0123456789ab"
    at.session_state["draft"] = draft
    return at.run()


def test_the_form_counts_the_runs_and_refuses_bad_rates(folder):
    at = page_with(RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32), epochs=1))
    assert not at.exception
    assert any("**7 runs**" in m.value for m in at.markdown)  # head, stem, layer1-4, full
    at.number_input(key="sweep_seeds").set_value(3).run()
    assert any("**21 runs**" in m.value for m in at.markdown)
    at.text_input(key="sweep_lrs").set_value("0.01, fast").run()
    assert any("'fast' is not a learning rate" in e.value for e in at.error)
    assert "sweep_start" not in [b.key for b in at.button] and SweepStore(get_manager().store).list() == []


def test_a_tiny_sweep_runs_to_its_answer_and_the_answer_goes_into_the_draft(folder):
    at = page_with(RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32), epochs=1,
                             batch_size=8))
    at.multiselect(key="sweep_stages").set_value(["layer4"]).run()
    assert any("**3 runs**" in m.value for m in at.markdown)
    at.button(key="sweep_start").click().run()
    assert not at.exception
    [record] = SweepStore(get_manager().store).list()
    assert at.query_params["sweep"] == [record.id] or at.query_params["sweep"] == record.id
    for run_id in record.run_ids:
        assert get_manager().wait(run_id, TIMEOUT) == FINISHED
    at.run()
    assert not at.exception
    [table] = [d.value for d in at.dataframe if "strategy" in d.value.columns]
    assert list(table["strategy"]) == ["head", "layer4", "full"] and set(table["status"]) == {FINISHED}
    # the surgical chart: each strategy against full fine-tuning (one seed: the plain differences)
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("sweep_relative_chart"))
    bars = json.loads(chart.proto.spec)["data"][0]
    acc = {m.label: m.val_acc for m in sweep_state(get_manager().store, record).members}
    assert bars["x"] == ["head", "layer4"]
    assert bars["y"] == pytest.approx([100 * (acc[s] - acc["full"]) for s in ("head", "layer4")])
    [answer] = [s.value for s in at.success]
    assert answer.startswith("**Best:**")
    # the next sweep's time: the cost model's work at the speed these runs reached here
    at.session_state["dataset_sizes"] = {str(folder): (19, 5)}
    at.run()
    assert any(re.search(r"About \d+ min: [\d.]+ [GMT]?FLOP of work \(cost model\) at the [\d.]+ [GMT]?FLOP/s", m.value)
               for m in at.markdown)
    at.button(key="sweep_apply").click().run()
    applied = at.session_state["draft"]
    label = next(m for m in record.members if f"`{m['label']}`" in at.button(key="sweep_apply").label)
    assert applied.frozen == tuple(label["frozen"])
