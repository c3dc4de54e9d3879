"""A sweep's answer in words a newcomer reads (`recommendation.answer` in the JSON, the same sentence
on the Sweep page): what trains in plain terms, its share of the parameters, its held-out test
accuracy against full fine-tuning's, its training time against full's, and what it rests on
(seeds, rates tuned or not). While the sweep runs, the sentence says "so far" and the time left.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from core.config import AUTO_RGN
from core.freezing import PRESET_LABELS
from core.models import arch_spec, stages
from core.sweeps.stats import Row


def what_trains(label: str, model: nn.Module, arch: str) -> str:
    """A strategy's label in plain terms: "only the stem (conv1, bn1) and the new head (fc)"."""
    head = arch_spec(arch).head
    trunk = {s.name: s for s in stages(model, arch)}
    if label == "full":
        return "every layer"
    if label == "head":
        return f"only the new head ({head})"
    if label == AUTO_RGN:
        return "every layer, each tensor at a rate scaled by its relative gradient norm (Auto-RGN)"
    if label in trunk:
        return f"only the {label} ({', '.join(trunk[label].paths)}) and the new head ({head})"
    if label.startswith("last") and label[4:].isdigit():
        names = list(trunk)[-int(label[4:]):]
        return f"the last {len(names)} stages ({', '.join(names)}) and the new head ({head})"
    return f"what the {PRESET_LABELS.get(label, label)} preset trains"


def _acc(mean: float | None, error: float | None) -> str:
    if mean is None:
        return "no test images"
    return f"{mean:.1%}" + (f" ± {error:.1%}" if error is not None else "")


def _share(part: int, whole: int) -> str:
    """A share in percent with two significant digits below 1% (0.028%), one decimal above (75.1%)."""
    percent = 100 * part / whole
    return f"{percent:.2g}%" if percent < 1 else f"{percent:.1f}%"


def answer_sentence(chosen: Row, rows: Sequence[Row], *, described: str, total_params: int, seeds: int,
                    rates: Sequence[float], so_far: str | None = None) -> str:
    """The sentence. `described`: `what_trains` of the chosen label; `rates`: the rates tried (one:
    not tuned); `so_far`: None when the sweep has ended, else what has finished ("4 of 21 runs, about
    6 min left")."""
    full = next((r for r in rows if r.label == "full"), None)
    text = (f"Train {described}: {_share(chosen.trainable_params, total_params)} of the parameters, test accuracy "
            f"{_acc(chosen.test_mean_acc, chosen.test_sem_acc)}")
    if full is not None and full.label != chosen.label:
        ratio = chosen.mean_train_s / full.mean_train_s if full.mean_train_s else float("nan")
        text += (f" against full fine-tuning's {_acc(full.test_mean_acc, full.test_sem_acc)}, in {ratio:.0%} of "
                 "its training time")
    tuned = (f"its rate {chosen.lr:g} chosen from {', '.join(f'{r:g}' for r in rates)} on validation"
             if len(rates) > 1 else f"one rate ({chosen.lr:g}), not tuned")
    seeds_text = f"{seeds} seeds" if seeds > 1 else "one seed (no error bar)"
    text += (f". Chosen on validation accuracy (the cheapest strategy within one standard error of the best), "
             f"{seeds_text}, {tuned}; the test images chose nothing.")
    return f"So far ({so_far}): {text}" if so_far else text
