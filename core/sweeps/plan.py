"""Sweep kinds -> member `RunConfig`s: what trains in each member, at which rate, with which seed.

- **depth** (Yosinski et al., 2014): the head only, then the last 1, 2, ... stages with the head,
  then full fine-tuning (labels ``head``, ``last1`` ..., ``full``);
- **surgical** (Lee et al., ICLR 2023): exactly one stage with the new head, for each stage, plus
  the head only and full fine-tuning (labels: the Model page's stage names, ``head``, ``full``);
- **grid**: any presets (``head``, ``classifier``, ``last2``, ``full``, ...), single stages, or
  ``auto-rgn`` (every layer, each at a rate scaled by its relative gradient norm, Lee et al.'s
  Auto-RGN); depth and surgical sweeps add ``auto-rgn`` after ``full`` when asked
  (`SweepConfig.with_auto_rgn`).

Every strategy runs once per learning rate and seed. Members are listed in forward order (what
trains moves from the output towards the input for depth, from the input to the output for
surgical), then by rate and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from core.config import AUTO_RGN, MAX_SWEEP_MEMBERS, RunConfig, SweepConfig
from core.estimate import plan_feature_cache
from core.freezing import frozen_complement, preset_frozen, set_frozen, set_train_mode
from core.models import arch_spec, build_skeleton, forward_chain, stages


@dataclass(frozen=True)
class Strategy:
    label: str  # what trains: "head", "last2", "layer1", "full", a preset name
    preset: str  # RunConfig.preset of the members: the preset, or the stage's name
    frozen: tuple[str, ...]
    auto_rgn: bool = False  # every layer trains at rates scaled by their relative gradient norms


@dataclass(frozen=True)
class Member:
    label: str  # the strategy's label, with the rate when the sweep tries several ("head @ 0.01")
    strategy: Strategy
    lr: float
    seed: int


def strategies(sweep: SweepConfig, model: nn.Module | None = None) -> list[Strategy]:
    """The sweep's strategies, in forward order; `ValueError` naming what is wrong for a bad sweep."""
    base = sweep.base
    model = model if model is not None else build_skeleton(base.arch, base.num_classes)
    trunk = stages(model, base.arch)
    names = [s.name for s in trunk]
    if unknown := [s for s in sweep.stages if s not in names]:
        raise ValueError(f"{arch_spec(base.arch).label} has no stage {unknown[0]!r}; its stages are {', '.join(names)}.")
    chosen = [s for s in trunk if not sweep.stages or s.name in sweep.stages]

    def preset(name: str) -> Strategy:
        return Strategy(name, name, preset_frozen(model, base.arch, name))

    def one_stage(stage) -> Strategy:
        return Strategy(stage.name, stage.name, frozen_complement(model, [*stage.paths, arch_spec(base.arch).head]))

    auto_rgn = Strategy(AUTO_RGN, AUTO_RGN, preset_frozen(model, base.arch, AUTO_RGN), auto_rgn=True)
    extra = [auto_rgn] if sweep.with_auto_rgn else []
    if sweep.kind == "depth":
        deepest = len(trunk) - min(names.index(s.name) for s in chosen)  # the most stages a member trains
        lasts = [preset(f"last{k}") for k in range(1, deepest + 1) if k < len(trunk)]
        return [preset("head"), *lasts, preset("full"), *extra]
    if sweep.kind == "surgical":
        return [preset("head"), *(one_stage(s) for s in chosen), preset("full"), *extra]
    by_stage = {s.name: s for s in trunk}
    return [auto_rgn if p == AUTO_RGN else one_stage(by_stage[p]) if p in by_stage else preset(p) for p in sweep.presets]


def plan(sweep: SweepConfig, model: nn.Module | None = None) -> list[Member]:
    """Every member of the sweep: each strategy at each rate with each seed (see the module docstring)."""
    sweep.validate()
    rates = sweep.lrs or (sweep.base.lr,)
    seeds = [sweep.base.seed + i for i in range(sweep.seeds)]
    members = [Member(f"{s.label} @ {lr:g}" if len(rates) > 1 else s.label, s, lr, seed)
               for s in strategies(sweep, model) for lr in rates for seed in seeds]
    if len(members) > MAX_SWEEP_MEMBERS:
        raise ValueError(f"This sweep would train {len(members)} runs; the limit is {MAX_SWEEP_MEMBERS}. "
                         "Use fewer stages, rates or seeds.")
    return members


def member_config(sweep: SweepConfig, member: Member) -> RunConfig:
    """The `RunConfig` a member trains (Auto-RGN's norm layers in training mode, as in Lee et al.'s code)."""
    auto_rgn = member.strategy.auto_rgn
    return sweep.base.replace(frozen=member.strategy.frozen, preset=member.strategy.preset, lr=member.lr,
                              seed=member.seed, auto_rgn=auto_rgn,
                              bn_frozen_eval=False if auto_rgn else sweep.base.bn_frozen_eval)


def member_configs(sweep: SweepConfig, members: list[Member], model: nn.Module | None = None) -> list[RunConfig]:
    """Every member's `RunConfig`, each told to store the features of every other member's frozen
    prefix that its own feature pass goes through (`RunConfig.share_features`): the first member with
    the longest prefix (the head-only one, first in every kind's order) computes them all in one pass
    over the data, and the others read theirs from disk."""
    configs = [member_config(sweep, m) for m in members]
    model = model if model is not None else build_skeleton(sweep.base.arch, sweep.base.num_classes)
    ends = set()
    for config in dict.fromkeys(configs):
        set_frozen(model, config.frozen)
        set_train_mode(model, config.bn_frozen_eval)
        if (cache := plan_feature_cache(forward_chain(model, config.arch), config)).used:
            ends.add(cache.prefix)
    set_frozen(model, ())
    shared = tuple(name for name, _ in forward_chain(model, sweep.base.arch) if name in ends)
    return [c.replace(share_features=shared) for c in configs]
