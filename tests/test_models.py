"""core.models: catalog, head replacement, weights sources and checkpoint loading."""

import io
import pickle
import re
import urllib.request

import pytest
import torch
from torch import nn

from core import models
from core.models import (
    CATALOG,
    CheckpointError,
    WeightsUnavailableError,
    build_model,
    build_skeleton,
)


@pytest.mark.parametrize("arch", list(CATALOG))
def test_catalog_matches_published_parameter_counts(arch):
    # 1000 classes, no weights: exactly torchvision's published model (built on meta: no memory).
    model = build_skeleton(arch, 1000)
    assert sum(p.numel() for p in model.parameters()) == models.published_num_params(arch)


@pytest.mark.parametrize(
    "arch, head, code",
    [
        ("vgg19", "classifier.6", lambda m: m.classifier[6]),
        ("alexnet", "classifier.6", lambda m: m.classifier[6]),
        ("resnet50", "fc", lambda m: m.fc),
        ("mobilenet_v3_large", "classifier.3", lambda m: m.classifier[3]),
        ("efficientnet_b0", "classifier.1", lambda m: m.classifier[1]),
        ("densenet121", "classifier", lambda m: m.classifier),
        ("convnext_tiny", "classifier.2", lambda m: m.classifier[2]),
    ],
)
def test_head_is_replaced_in_place_keeping_torchvision_names(arch, head, code):
    model = build_skeleton(arch, 7)
    layer = code(model)
    assert isinstance(layer, nn.Linear) and layer.out_features == 7
    assert model.get_submodule(head) is layer
    assert models.arch_spec(arch).head == head


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        models.arch_spec("resnet9000")


def test_random_init_model_runs_any_input_size():
    model = build_model("resnet18", 3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, 3)


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def alexnet_state():
    return build_model("alexnet", 10).state_dict()


def test_checkpoint_with_other_head_reports_mismatch(tmp_path, alexnet_state):
    path = tmp_path / "alexnet10.pt"
    path.write_bytes(_save(alexnet_state))
    model, report = models.prepare_model("alexnet", 4, path)
    assert report.mismatched == [
        ("classifier.6.weight", (10, 4096), (4, 4096)),
        ("classifier.6.bias", (10,), (4,)),
    ]
    assert report.missing == ["classifier.6.bias", "classifier.6.weight"]
    assert report.unexpected == []
    assert len(report.loaded) == len(alexnet_state) - 2
    assert torch.equal(model.features[0].weight, alexnet_state["features.0.weight"])
    assert report.status_of("features.0.weight") == "loaded"
    assert report.status_of("classifier.6.weight") == "mismatched"


def test_checkpoint_wrapped_and_dataparallel_prefixed_loads(alexnet_state):
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in alexnet_state.items()}}
    state = models.read_state_dict(_save(wrapped))
    assert set(state) == set(alexnet_state)


def test_extra_keys_are_unexpected(alexnet_state):
    state = dict(alexnet_state, **{"extra.weight": torch.zeros(3)})
    report = models.load_checkpoint(build_model("alexnet", 10), "alexnet", state)
    assert report.unexpected == ["extra.weight"]
    assert report.missing == [] and report.mismatched == []


def test_checkpoint_of_another_architecture_is_refused_and_model_unchanged(alexnet_state):
    model = build_model("resnet18", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="another architecture"):
        models.load_checkpoint(model, "resnet18", alexnet_state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_head_size_refused_when_the_head_is_required(alexnet_state):
    with pytest.raises(CheckpointError, match="number of classes differs"):
        models.load_checkpoint(build_model("alexnet", 3), "alexnet", alexnet_state, require_head=True)


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['BOOM']).write_text('ran')",))


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "side-effect"
    monkeypatch.setenv("BOOM", str(marker))
    payload = _save({"fc.weight": torch.zeros(2, 2), "evil": _Boom()})
    with pytest.raises(CheckpointError, match="could not be read safely"):
        models.read_state_dict(payload)
    assert not marker.exists()
    # a raw (non-zip) pickle too
    with pytest.raises(CheckpointError):
        models.read_state_dict(pickle.dumps(_Boom(), protocol=2))
    assert not marker.exists()


def test_safetensors_checkpoint(tmp_path, alexnet_state):
    from safetensors.torch import save_file

    path = tmp_path / "alexnet.safetensors"
    save_file({k: v.contiguous() for k, v in alexnet_state.items()}, path)
    _, report = models.prepare_model("alexnet", 10, path)
    assert report.ok


@pytest.mark.parametrize("data", [b"", b"not a checkpoint at all", _save([1, 2, 3]), _save({"a": 1})])
def test_garbage_checkpoints_give_a_clear_error(data):
    with pytest.raises(CheckpointError):
        models.read_state_dict(data)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint file"):
        build_model("resnet18", 2, tmp_path / "nope.pt")


def test_imagenet_offline_gives_a_way_forward(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert not models.imagenet_available("resnet18")
    with pytest.raises(WeightsUnavailableError, match="random initialisation"):
        build_model("resnet18", 10, "imagenet")
    assert not list(tmp_path.rglob("*.partial"))


def test_imagenet_download_reports_progress_checks_hash_and_is_used_from_cache(tmp_path, monkeypatch):
    """The real download path, served from bytes instead of the network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    payload = _save(build_model("resnet18", 1000).state_dict())

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(payload))
    seen = []
    # The real file name carries a hash prefix our payload cannot match: the download is refused.
    with pytest.raises(WeightsUnavailableError, match="corrupt"):
        models.download_imagenet_weights("resnet18", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (len(payload), len(payload))
    assert not models.imagenet_available("resnet18")
    # A cached file is used as is (torchvision loads it from the hub cache, no network).
    cache = models.imagenet_cache_path("resnet18")
    cache.write_bytes(payload)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    model = build_model("resnet18", 5, "imagenet")
    assert model.fc.out_features == 5
    assert torch.equal(model.conv1.weight, torch.load(io.BytesIO(payload))["conv1.weight"])


def test_uploaded_checkpoint_is_stored_under_the_data_dir_whatever_its_name(tmp_path, alexnet_state):
    data = _save(alexnet_state)
    path = models.store_checkpoint(data, "../../../etc/evil name.pt", tmp_path)
    assert path.parent == tmp_path / "checkpoints" and path.name.endswith("evil_name.pt")
    assert path.read_bytes() == data
    assert models.store_checkpoint(data, "other.pt", tmp_path).read_bytes() == data
    assert not (tmp_path.parent / "etc").exists()


def test_a_full_checkpoint_is_assigned_to_a_meta_built_backbone(tmp_path):
    """Every backbone tensor in the file: no random init is computed for it, the model holds the file's
    values (cast to fp32 where the file has another dtype), a fresh head, and trains as usual."""
    source = build_model("resnet18", 1000)
    state = {k: (v.half() if k == "layer1.0.conv1.weight" else v) for k, v in source.state_dict().items()}
    path = tmp_path / "full.pt"
    torch.save(state, path)
    model, report = models.prepare_model("resnet18", 7, path)
    assert report.missing == ["fc.bias", "fc.weight"] and not report.unexpected
    own = model.state_dict()
    assert torch.equal(own["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    assert own["layer1.0.conv1.weight"].dtype == torch.float32
    assert torch.equal(own["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"].float())
    assert model.fc.out_features == 7 and not model.fc.weight.is_meta
    params = list(model.parameters())
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad and not p.is_meta for p in params)
    assert not any(b.is_meta for b in model.buffers())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.conv1.weight.grad is not None


def test_a_partial_checkpoint_keeps_torchvision_init_for_what_it_lacks(tmp_path):
    source = build_model("resnet18", 1000).state_dict()
    partial = {k: v for k, v in source.items() if not k.startswith("layer4.1.")}
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    model, report = models.prepare_model("resnet18", 3, path)
    assert "layer4.1.conv1.weight" in report.missing
    assert not any(t.is_meta for t in model.state_dict().values())
    assert model.layer4[1].conv1.weight.std() > 0  # initialised, not empty
    assert torch.equal(model.layer1[0].conv1.weight, source["layer1.0.conv1.weight"])


def test_densenet_imagenet_file_with_old_key_names_still_loads(tmp_path, monkeypatch):
    """torchvision's DenseNet files name some keys the old way (norm.1); its own builder renames them,
    so those files take the builder's path."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    state = build_model("densenet121", 1000).state_dict()
    old = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    old_names = {old.sub(r"\1.\2", k): v for k, v in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old_names
    path = models.imagenet_cache_path("densenet121")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(old_names, path)
    model = build_model("densenet121", 4, "imagenet")
    assert torch.equal(model.features.denseblock1.denselayer1.norm1.weight,
                       state["features.denseblock1.denselayer1.norm1.weight"])
