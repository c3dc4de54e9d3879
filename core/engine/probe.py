"""The relative-gradient-norm probe: which layers want to move on this data, before anything trains.

Lee et al. (ICLR 2023) read a layer's relative gradient norm ‖∇θ‖ / ‖θ‖ as how much the target data
asks of it. `probe_rgn` builds the run's model from its starting weights with every layer
trainable, takes the mean gradient of the cross-entropy over a few training batches (no
augmentation, BatchNorm in training mode as fine-tuning would run it) and makes no update. It keeps
each tensor's squared gradient and weight norms, so any grouping (a layer, a block, a stage) is
aggregated afterwards as one vector (`Signals.rgn`). The app runs it in a worker process
(`core.jobs.probes`), never in the server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core import models
from core.config import RunConfig
from core.data import Preprocess
from core.devices import amp_dtype
from core.engine.inputs import prepare_data
from core.engine.loop import Feeder, Split
from core.engine.signals import relative_norm
from core.freezing import network_parts, set_frozen
from core.store import resolve_weights

PROBE_BATCHES = 4  # batches of the run's batch size; the mean gradient over them is measured


@dataclass(frozen=True)
class Signals:
    """A probe's result: each parameter tensor's squared norms, in the model's order."""

    arch: str
    weights: str
    dataset: str
    image_size: tuple[int, int]
    images: int  # training images the gradient was averaged over
    tensors: dict[str, tuple[float, float]]  # name -> (‖g‖², ‖θ‖²)
    groups: dict[str, list[str]]  # `network_parts`: the stages, the classifier's rest, the head

    def rgn(self, names) -> float | None:
        """The relative gradient norm of `names` taken as one vector (None: no weight, or no such tensor)."""
        pairs = [self.tensors[n] for n in names if n in self.tensors]
        return relative_norm(sum(g for g, _ in pairs), sum(p for _, p in pairs)) if pairs else None

    def under(self, paths) -> list[str]:
        """The tensors under the dotted module `paths`."""
        return [n for n in self.tensors if any(n == p or n.startswith(p + ".") for p in paths)]

    def group_rgn(self) -> dict[str, float | None]:
        """{signal group: RGN}, in forward order."""
        return {group: self.rgn(names) for group, names in self.groups.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Signals:
        return cls(**(data | {"image_size": tuple(data["image_size"]),
                              "tensors": {k: tuple(v) for k, v in data["tensors"].items()}}))


def probe_rgn(config: RunConfig, *, device: torch.device, runs_dir: Path, batches: int = PROBE_BATCHES) -> Signals:
    """Every tensor's gradient and weight norms for `config`'s model, weights and data; see the module
    docstring. `DatasetError` / `CheckpointError` / `ValueError` for bad input, as `train` raises."""
    config = config.replace(frozen=(), preset="full", auto_rgn=False, augment=())
    config.validate()
    data = prepare_data(config, device)
    torch.manual_seed(config.seed)  # the new head's initialisation, as the run would draw it
    model, _ = models.prepare_model(config.arch, config.num_classes,
                                    resolve_weights(config.weights, config.arch, runs_dir=runs_dir))
    set_frozen(model, ())
    model.to(device).train()
    train = data.splits["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    chosen = order[: batches * config.batch_size].split(config.batch_size)
    _accumulate_gradients(model, train, chosen, data.pre, device, amp_dtype(config.precision, device))
    tensors = {n: (float(p.grad.float().square().sum()) if p.grad is not None else 0.0, float(p.detach().float().square().sum()))
               for n, p in model.named_parameters()}
    return Signals(config.arch, config.weights, config.dataset, config.image_size, sum(len(b) for b in chosen), tensors,
                   network_parts(model, config.arch))


def _accumulate_gradients(model, split: Split, batches, pre: Preprocess, device: torch.device, amp) -> None:
    """The mean over `batches` of each batch's mean cross-entropy gradient, left in `.grad`."""
    feeder = Feeder(device, pre, (), torch.Generator(device=device))
    for idx in batches:
        x = feeder.images(split.x, idx, train=False)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        (F.cross_entropy(logits.float(), split.y[idx.to(split.y.device)]) / len(batches)).backward()
