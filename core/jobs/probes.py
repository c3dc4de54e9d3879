"""Layer-signal probes as jobs: the Model page asks, a worker process measures, the disk remembers.

A probe (`core.engine.probe.probe_rgn`) is a few forward and backward passes: seconds, not the
minutes of a run. So it does not queue behind the runs of the `JobManager` (a sweep can hold that
queue for an hour): `SignalProbes` runs one probe at a time in a worker process of its own
(`ProcessTrainer.probe`, closed after each probe, so an idle app holds no second torch process), in
a background thread the page polls. Each result is kept on disk under a key of what it depends on
(`probe_key`: architecture, weights, classes, dataset, input size, batch size, seed), so asking again
costs nothing and the answer survives a restart.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import RunConfig
from core.engine import PROBE_BATCHES, Signals
from core.files import write_json
from core.jobs.checks import check_runnable
from core.jobs.execute import failure_reason
from core.jobs.worker import ProcessTrainer
from core.store import FINISHED, RunStore


@dataclass(frozen=True)
class ProbeState:
    """Where a probe stands: "none" (never asked), "running", "done" (with `signals`), "failed" (with `reason`)."""

    status: str
    signals: Signals | None = None
    reason: str | None = None


def probe_key(config: RunConfig) -> str:
    """What a probe's result depends on, hashed: a checkpoint file counts with its size and time."""
    weights = config.weights
    if weights not in ("none", "imagenet") and not weights.startswith("run:"):
        stat = Path(weights).stat()
        weights = f"{weights}:{stat.st_size}:{stat.st_mtime_ns}"
    facts = [config.arch, weights, config.num_classes, config.dataset, list(config.image_size), config.batch_size,
             config.seed, config.val_fraction, config.precision, PROBE_BATCHES]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:20]


class SignalProbes:
    """Probes for the app's server: `request(config)` starts one (or finds it done), `state(key)` tells."""

    def __init__(self, store: RunStore, cache_dir: Path, device: torch.device, threads: int | None = None) -> None:
        self.store, self.cache_dir, self.device = store, Path(cache_dir), device
        self._trainer = ProcessTrainer(threads)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freeze-lab-probe")
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}

    def request(self, config: RunConfig) -> str:
        """Start the probe of `config` unless its result is on disk or it is under way; its key.
        `ValueError` for the user when the config cannot be probed (nothing starts)."""
        config = config.replace(frozen=(), preset="full", auto_rgn=False)
        check_runnable(config, self.store)
        if config.weights.startswith("run:") and self.store.load(config.weights.removeprefix("run:")).status != FINISHED:
            raise ValueError("The run these weights come from has not finished: probe its weights when it has.")
        key = probe_key(config)
        with self._lock:
            if not self._path(key).exists() and (key not in self._futures or self._futures[key].done()):
                self._futures[key] = self._pool.submit(self._probe, config, key)
        return key

    def state(self, key: str) -> ProbeState:
        path = self._path(key)
        if path.exists():
            try:
                return ProbeState("done", Signals.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError, KeyError):
                path.unlink(missing_ok=True)  # a damaged cache file is measured again
                return ProbeState("none")
        with self._lock:
            future = self._futures.get(key)
        if future is None:
            return ProbeState("none")
        if not future.done():
            return ProbeState("running")
        exc = future.exception()
        return ProbeState("failed", reason=failure_reason(exc)) if exc else ProbeState("none")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._trainer.close()

    def _probe(self, config: RunConfig, key: str) -> None:
        try:
            signals = self._trainer.probe(config, device=self.device, runs_dir=self.store.root)
        finally:
            self._trainer.close()  # probes are rare: no torch process idles between them
        write_json(self._path(key), signals.to_dict())

    def _path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"
