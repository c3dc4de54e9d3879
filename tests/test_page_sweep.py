"""AppTest for the Sweep page: plan a sweep from the draft, run a tiny one to its answer, apply it."""

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig, SweepConfig
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
    assert any("**21 runs**" in m.value for m in at.markdown)  # head, stem, layer1-4, full at 0.003, 0.01, 0.03
    at.number_input(key="sweep_seeds").set_value(3).run()
    assert any("**63 runs**" in m.value for m in at.markdown)
    at.toggle(key="sweep_tune").set_value(False).run()
    assert any("**21 runs**" in m.value for m in at.markdown)  # one rate, three seeds
    at.text_input(key="sweep_lrs").set_value("0.01, fast").run()
    assert any("'fast' is not a learning rate" in e.value for e in at.error)
    assert "sweep_start" not in [b.key for b in at.button] and SweepStore(get_manager().store).list() == []


def test_a_tiny_sweep_tunes_the_rate_runs_to_its_answer_and_the_answer_goes_into_the_draft(folder):
    at = page_with(RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32), epochs=1,
                             batch_size=8, lr=0.01))
    at.multiselect(key="sweep_stages").set_value(["layer4"]).run()
    assert any("**9 runs**" in m.value for m in at.markdown)  # three strategies at 0.003, 0.01 and 0.03
    at.button(key="sweep_start").click().run()
    assert not at.exception
    [record] = SweepStore(get_manager().store).list()
    assert at.query_params["sweep"] == [record.id] or at.query_params["sweep"] == record.id
    for run_id in record.run_ids:
        assert get_manager().wait(run_id, TIMEOUT) == FINISHED
    at.run()
    assert not at.exception
    [table] = [d.value for d in at.dataframe if "strategy" in d.value.columns]
    assert list(table["strategy"]) == [s for s in ("head", "layer4", "full") for _ in range(3)]
    assert list(table["lr"]) == [0.003, 0.01, 0.03] * 3 and set(table["status"]) == {FINISHED}
    assert table["test acc"].notna().all() and (table["trainable params"] > 0).all()
    # the chart and the relative chart: each strategy at the rate its validation chose, reported on test
    report = sweep_state(get_manager().store, record)
    chosen = {r.label: r for r in report.rows}
    for label, row in chosen.items():
        tried = [m for m in report.members if m.strategy == label]
        assert row.mean_acc == max(m.val_acc for m in tried)  # one seed: the member's own figure
        assert row.test_mean_acc == next(m.test_acc for m in tried if m.lr == row.lr)
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith("sweep_relative_chart"))
    bars = json.loads(chart.proto.spec)["data"][0]
    assert bars["x"] == ["head", "layer4"]
    assert bars["y"] == pytest.approx([100 * (chosen[s].test_mean_acc - chosen["full"].test_mean_acc)
                                       for s in ("head", "layer4")])
    [answer] = [s.value for s in at.success]
    rec = report.recommendation
    assert answer == rec["answer"] and answer.startswith("Train ") and "chosen from 0.003, 0.01, 0.03" in answer
    # the next sweep's time: the cost model's work at the speed these runs reached here
    at.session_state["dataset_sizes"] = {str(folder): (19, 5, 6)}
    at.run()
    assert any(re.search(r"About \d+ min: [\d.]+ [GMT]?FLOP of work \(cost model\) at the [\d.]+ [GMT]?FLOP/s", m.value)
               for m in at.markdown)
    assert f"`{rec['chosen']}` at {rec['lr']:g}" in at.button(key="sweep_apply").label
    at.button(key="sweep_apply").click().run()
    applied = at.session_state["draft"]
    member = next(m for m in report.members if m.strategy == rec["chosen"])
    assert applied.frozen == tuple(member.frozen) and applied.lr == rec["lr"]


@pytest.mark.parametrize("owner, one_click", [("0123456789ab", True), ("someone-else", False)])
def test_stopping_another_users_sweep_takes_a_second_click(folder, owner, one_click):
    """The Train page's rule for another user's run, for sweeps too: one click stops only your own."""
    store = get_manager().store
    config = RunConfig(arch="resnet18", num_classes=3, dataset=str(folder), image_size=(32, 32), epochs=1)
    run_ids = [store.create(config.replace(seed=seed), owner=owner) for seed in (0, 1)]  # queued, not yet trained
    members = [{"label": "full", "strategy": "full", "preset": "full", "frozen": [], "lr": 0.01, "seed": seed,
                "run_id": run_id} for seed, run_id in enumerate(run_ids)]
    sweep_id = SweepStore(store).create(SweepConfig(base=config, kind="grid", presets=("full",), seeds=2), members,
                                        name="a sweep", owner=owner)
    at = page_with(config)
    at.query_params["sweep"] = sweep_id
    at.run()
    assert not at.exception
    keys = [b.key for b in at.button]
    assert ("sweep_stop" in keys) == one_click and ("sweep_stop_other" in keys) == (not one_click)
