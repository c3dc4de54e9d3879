"""core.estimate.livebytes: live tensor bytes counted op by op."""

import torch

from core.estimate import LiveBytes


def test_counts_new_storages_and_frees_them():
    with LiveBytes() as mem:
        a = torch.ones(1000)  # 4,000 bytes
        b = a * 2  # another 4,000
        assert mem.current == 8000
        del b
        assert mem.current == 4000
        c = torch.ones(500)
    assert mem.peak == 8000
    assert mem.current == 6000
    del a, c


def test_views_and_in_place_ops_add_nothing():
    with LiveBytes() as mem:
        a = torch.ones(10, 100)
        a.view(-1)[:10].relu_()
        a.t()
        a.add_(1)
        a.view(100, 10)
    assert mem.peak == 4000
    del a


def test_storages_from_before_are_counted_only_when_tracked():
    weight = torch.ones(256)  # 1 KiB, created before the mode
    with LiveBytes() as mem:
        weight.t().mul_(2)  # a view and an in-place update of an untracked storage: not new memory
        assert mem.current == 0
        mem.track({"w": [weight]})
        assert mem.current == 1024
        mem.track(weight)  # counted once
        assert mem.current == 1024


def test_reset_peak_starts_from_what_is_alive():
    with LiveBytes() as mem:
        a = torch.ones(100)
        b = torch.ones(100)
        del b
        mem.reset_peak()
        assert mem.peak == 400
        c = torch.ones(50)
    assert mem.peak == 600
    del a, c


def test_device_filter():
    with LiveBytes(device_type="cpu") as mem:
        m = torch.empty(1000, device="meta")
        c = torch.empty(10)
    assert mem.peak == 40
    del m, c


def test_autograd_saved_tensors_and_gradients_are_seen():
    w = torch.ones(100, 100, requires_grad=True)
    with LiveBytes() as mem:
        x = torch.ones(8, 100)
        y = (x @ w).relu()  # relu saves its output
        y.sum().backward()
    # x, the matmul output, the relu output and w's gradient (40,000 bytes) were alive together
    assert mem.peak >= 3200 + 3200 + 40000
    assert w.grad is not None
    del x, y
