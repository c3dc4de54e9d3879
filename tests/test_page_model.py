"""AppTest for the Model page: pick a model, tick boxes, apply presets."""

import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.estimate import cost_profile, human_bytes, run_memory
from core.jobs.probes import probe_key
from core.models import build_skeleton
from tests.test_training import draw_folder
from ui.services import get_manager, get_probes

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "model.py")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch, in_process_training):
    monkeypatch.setenv("FREEZE_LAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("FREEZE_LAB_DATA_DIR", str(tmp_path / "data"))
    get_manager.clear()  # the page lists this test's runs
    yield
    get_manager().shutdown(wait=True, timeout=30)
    get_manager.clear()


def open_page(arch="resnet18", **changes) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["draft"] = RunConfig(**({"arch": arch, "num_classes": 10, "image_size": (64, 64)} | changes))
    return at.run()


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def trainable(at: AppTest) -> int:
    return int(metric(at, "Trainable parameters").replace(",", ""))


def test_page_renders_tree_cost_and_code():
    at = open_page()
    assert not at.exception
    assert trainable(at) == 11_181_642  # resnet18 with a 10-class head, full fine-tune
    overview = at.data_editor(key="tree_overview@0").value
    assert list(overview["layer"]) == ["stem", "layer1", "layer2", "layer3", "layer4", "classifier"]
    # tabs and blocks are lazy: only the open ones are built and sent
    assert not at.code and not any("of the compute" in m.value for m in at.markdown)
    assert [d.key for d in at.data_editor] == ["tree_overview@0"]  # the blocks' tables stay closed
    open_tab(at, "PyTorch code")
    assert "model.fc = nn.Linear" in at.code[0].value and not at.data_editor
    open_tab(at, "Cost")
    assert any("of the compute" in m.value for m in at.markdown)


def open_tab(at: AppTest, name: str) -> AppTest:
    at.session_state["model_tabs"] = name  # what a click on the tab does
    return at.run()


def open_block(at: AppTest, name: str) -> AppTest:
    at.session_state[f"tree_block_{name}"] = True  # what a click on the block's expander does
    return at.run()


def test_ticking_a_box_changes_the_counts():
    at = open_page()
    before = trainable(at)
    # untick "layer1" in the overview table (row 1)
    at.session_state["tree_overview@0"] = {"edited_rows": {1: {"train": False}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    after = trainable(at)
    assert before - after == 147_968  # layer1 of ResNet-18
    assert at.session_state["draft"].frozen == ("layer1",)
    assert at.session_state["draft"].preset == "custom"
    # the single-layer table of layer1 now shows it frozen
    layer1 = open_block(at, "layer1").data_editor(key="tree_layer1@1").value
    assert not layer1["train"].any()
    # tick one conv back inside layer1: partial
    row = list(layer1["path"]).index("layer1.0.conv1")
    at.session_state["tree_layer1@1"] = {"edited_rows": {row: {"train": True}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert trainable(at) == after + 36_864
    assert at.data_editor(key="tree_overview@2").value["state"][1] == "◐ partly"


@pytest.mark.parametrize("preset, expected", [
    ("full", 139_611_210), ("head", 40_970), ("classifier", 119_586_826), ("fc1_fc2", 119_586_826),
])
def test_vgg19_presets(preset, expected):
    at = open_page("vgg19", preset="head")
    at.button(key=f"preset_{preset}").click().run()
    assert not at.exception
    assert trainable(at) == expected
    assert at.session_state["draft"].preset == preset


def test_last_n_blocks_preset_and_bn_switch():
    at = open_page("resnet50")
    at.slider(key="preset_last_n").set_value(2).run()
    at.button(key="preset_last").click().run()
    assert not at.exception
    assert at.session_state["draft"].frozen == ("conv1", "bn1", "layer1", "layer2")
    at.toggle(key="model_bn_eval").set_value(False).run()
    assert at.session_state["draft"].bn_frozen_eval is False
    assert any("running statistics" in w.value for w in at.warning)


def test_non_square_input_shows_output_shapes():
    at = open_page("vgg19")
    at.number_input(key="model_h").set_value(448).run()
    at.number_input(key="model_w").set_value(224).run()
    block5 = at.data_editor(key="tree_overview@0").value
    assert block5["output"][4] == "512×14×7"


def test_preflight_warns_when_the_head_is_frozen():
    at = open_page(frozen=("fc",), preset="custom")
    assert any("New head trains" in w.value for w in at.warning)


def test_too_small_input_is_a_message_not_an_exception():
    at = open_page("alexnet")
    at.number_input(key="model_h").set_value(16).run()
    assert not at.exception
    assert any("too small" in e.value for e in at.error)


def test_checkpoint_path_report(tmp_path):
    import torch

    from core.models import build_model

    path = tmp_path / "r18.pt"
    torch.save(build_model("resnet18", 3).state_dict(), path)
    at = open_page()
    at.selectbox(key="model_weights").set_value("checkpoint").run()
    at.text_input(key="model_ckpt_path").input(str(path)).run()
    assert not at.exception
    assert at.session_state["draft"].weights == str(path)
    assert any("shape-mismatched" in e.label for e in at.expander)

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    at.text_input(key="model_ckpt_path").input(str(bad)).run()
    assert not at.exception
    assert at.error


def test_checkpoint_upload_is_stored_safely_and_reported(tmp_path):
    import io

    import torch

    from core.models import build_model

    buf = io.BytesIO()
    torch.save(build_model("resnet18", 3).state_dict(), buf)
    at = open_page()
    at.selectbox(key="model_weights").set_value("checkpoint").run()
    at.file_uploader(key="model_ckpt_upload").set_value(("../../r18.pt", buf.getvalue(), "application/octet-stream")).run()
    assert not at.exception
    stored = at.session_state["draft"].weights
    assert stored.startswith(str(tmp_path / "data" / "checkpoints")) and stored.endswith("r18.pt")
    assert any("shape-mismatched" in e.label for e in at.expander)


def test_uploaded_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    import io

    import torch

    marker = tmp_path / "side-effect"

    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Boom()}, buf)
    at = open_page()
    at.selectbox(key="model_weights").set_value("checkpoint").run()
    at.file_uploader(key="model_ckpt_upload").set_value(("evil.pt", buf.getvalue(), "application/octet-stream")).run()
    assert not at.exception
    assert any("could not be read safely" in e.value for e in at.error)
    assert not marker.exists()
    assert at.session_state["draft"].weights == "none"


def test_cost_tab_shows_a_whole_run_once_the_dataset_is_known():
    at = AppTest.from_file(PAGE, default_timeout=60)
    config = RunConfig(arch="resnet18", num_classes=10, image_size=(64, 64), dataset="demo-target", preset="head",
                       frozen=tuple(n for n in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")))
    at.session_state["draft"] = config
    open_tab(at, "Cost")
    assert not at.exception
    assert metric(at, "Memory per training step")  # no dataset yet: one step only
    assert any("Pick the dataset on the Data page" in i.value for i in at.info)

    at.session_state["dataset_sizes"] = {"demo-target": (192, 48)}  # what the Data page stores
    open_tab(at, "Cost")
    assert not at.exception
    peak = metric(at, "Peak memory of a run")
    run_table = next(d.value for d in at.dataframe if "Peak for the run" in " ".join(map(str, d.value.iloc[:, 0])))
    assert list(run_table.columns) == ["", "This choice", "Full fine-tune"]
    last = run_table.iloc[-1]
    assert last[""].startswith("Peak for the run (during ") and last["This choice"] == peak
    assert "Decoded images on the device (240)" in list(run_table[""])
    # a split smaller than the batch: the step's batch is the split, said the same way in the sentence and the table
    at.session_state["dataset_sizes"] = {"demo-target": (24, 6, 6)}
    open_tab(at, "Cost")
    assert any("batch 24: the whole training split, under the batch size 32" in m.value for m in at.markdown)
    step_table = next(d.value for d in at.dataframe if any("(batch" in str(v) for v in d.value.iloc[:, 0]))
    assert any("(batch 24," in str(v) for v in step_table.iloc[:, 0])
    at.session_state["dataset_sizes"] = {"demo-target": (192, 48)}
    open_tab(at, "Cost")
    assert any("features cached up to `flatten`" in m.value for m in at.markdown)
    # the same figure as core.estimate.run_memory gives for that draft
    expected = run_memory(cost_profile("resnet18", 10, (64, 64)), at.session_state["draft"], train_images=192,
                          val_images=48, device=torch.device("cpu"))
    assert peak == human_bytes(expected.peak_bytes)


# --- the starting weights of an earlier run: rendering never changes them ---------------------------------


def _queued_backbone(**changes) -> str:
    """A backbone run that sits in the queue: created in the store with no worker to train it."""
    return get_manager().store.create(RunConfig(arch="resnet18", num_classes=6, **changes), name="backbone")


def test_a_queued_backbone_in_the_draft_stays_the_draft_s_weights():
    """The run picker listed only finished runs, fell back to the first one and wrote it into the draft."""
    store = get_manager().store
    older = store.create(RunConfig(arch="resnet18", num_classes=6), name="an older finished run")
    store.set_status(older, "finished")
    backbone = _queued_backbone()
    at = open_page(weights=f"run:{backbone}")
    assert not at.exception
    assert at.session_state["draft"].weights == f"run:{backbone}"
    assert at.selectbox(key="model_run").value == backbone
    assert any("still queued" in i.value and "waits in the queue" in i.value for i in at.info)


def test_choosing_an_earlier_run_picks_none_until_the_user_does():
    store = get_manager().store
    done = store.create(RunConfig(arch="resnet18", num_classes=6), name="a finished run")
    store.set_status(done, "finished")
    at = open_page()
    at.selectbox(key="model_weights").set_value("run").run()
    assert not at.exception
    assert at.selectbox(key="model_run").value is None
    assert at.session_state["draft"].weights == "none"  # nothing chosen yet, nothing changed
    at.selectbox(key="model_run").set_value(done).run()
    assert at.session_state["draft"].weights == f"run:{done}"


def test_a_failed_backbone_in_the_draft_is_said_not_swapped():
    store = get_manager().store
    failed = store.create(RunConfig(arch="resnet18", num_classes=6), name="broken")
    store.set_status(failed, "failed", "boom")
    at = open_page(weights=f"run:{failed}")
    assert at.session_state["draft"].weights == f"run:{failed}"
    assert any("This run failed: it has no weights to start from" in e.value for e in at.error)


def test_the_first_run_panel_shows_until_there_is_a_run():
    at = open_page()
    assert any("Start here" in m.value for m in at.markdown)
    get_manager().store.create(RunConfig())
    at.run()
    assert not any("Start here" in m.value for m in at.markdown)


def test_ticking_every_box_by_hand_is_called_full_fine_tune_not_custom():
    at = open_page(preset="head", frozen=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))
    assert metric(at, "Strategy") == "Head only"
    edits = {i: {"train": True} for i in range(6)}
    at.session_state["tree_overview@0"] = {"edited_rows": edits, "added_rows": [], "deleted_rows": []}
    at.run()
    assert at.session_state["draft"].frozen == () and metric(at, "Strategy") == "Full fine-tune"


def test_the_layer_signals_probe_and_its_column_advise_nothing(tmp_path):
    folder = draw_folder(tmp_path / "shapes", per_class=6)
    get_probes.clear()
    try:
        at = open_page(num_classes=3, dataset=str(folder), image_size=(32, 32), batch_size=8, weights="none")
        assert "RGN" not in at.data_editor(key="tree_overview@0").value.columns  # nothing measured yet
        at.button(key="rgn_probe").click().run()
        assert not at.exception
        deadline = time.time() + 180
        while get_probes().state(probe_key(at.session_state["draft"].replace(frozen=()))).status == "running":
            assert time.time() < deadline
            time.sleep(0.2)
        at.run()
        signals = get_probes().state(probe_key(at.session_state["draft"])).signals
        overview = at.data_editor(key="tree_overview@0").value
        rgn = signals.group_rgn()
        assert list(overview["RGN"][:5]) == pytest.approx([rgn[s] for s in ("stem", "layer1", "layer2", "layer3", "layer4")])
        # a measurement with its meaning, and no one-click choice from it (it points the wrong way on demo-flip)
        assert any("It is a measurement, not advice" in c.value for c in at.caption)
        assert not [b for b in at.button if b.key == "rgn_apply"] and not [n for n in at.number_input if n.key == "rgn_top_k"]
    finally:
        get_probes().close()
        get_probes.clear()


def test_auto_rgn_trains_every_layer_but_the_norm_layers_and_a_preset_turns_it_off():
    at = open_page(preset="head", frozen=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))
    at.toggle(key="model_auto_rgn").set_value(True).run()
    draft = at.session_state["draft"]
    assert draft.preset == "auto-rgn" and not draft.bn_frozen_eval and len(draft.frozen) == 20  # the norm layers
    assert not at.exception and draft.auto_rgn
    model = build_skeleton("resnet18", 10)
    norms = sum(p.numel() for n, m in model.named_modules() if n in draft.frozen for p in m.parameters())
    assert metric(at, "Strategy") == "Auto-RGN" and trainable(at) == 11_181_642 - norms  # counted independently
    at.button(key="preset_head").click().run()
    assert not at.session_state["draft"].auto_rgn and at.session_state["draft"].preset == "head"
    assert at.session_state["draft"].bn_frozen_eval  # back to frozen norm layers in eval mode
    assert at.toggle(key="model_auto_rgn").value is False
