"""Sweeps on a Ray cluster: each member a Ray task on a GPU of its own (or a share of one).

`RayExecutor` has the job manager's `submit` and `cancel`, so `core.sweeps.submit_sweep` and
`stop_sweep` take either. Each submitted run goes through `core.jobs.execute` in a thread of the
app, exactly as a local run does (status, metrics, weights and failures recorded by the run store,
the only writer of run folders); its `train_fn` (`RayTrainer`) sends the member to the cluster:

- what travels: the member's config; the dataset decoded once by the app and put in Ray's object
  store once per sweep (`core.engine.inputs.decode_dataset`), with the member's split as positions
  into it; the starting weights, put once. Nothing assumes a filesystem shared with the app.
- while it trains, the member reports start, steps and epochs (with its node, GPUs and process id) to
  a small actor (`Relay`) that the app drains; a stop request goes the other way, read by the member
  between batches. A member still waiting for resources is cancelled with `ray.cancel`.
- when it ends, its summary and trainable weights come back as the task's result.

A worker or node that dies fails only its member (`TrainingProcessDied`, with its metrics so far);
the others go on. `ray` is imported only when a cluster is used (`connect`), so the app's start-up
does not pay for it.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

import core
from core.config import RunConfig
from core.engine import RunCancelled, TrainingProcessDied, TrainResult, train
from core.engine.inputs import DecodedDataset, Shipped, decode_dataset, shipped_weights, split_index
from core.jobs.checks import check_runnable
from core.jobs.execute import execute
from core.jobs.monitor import RunMonitor
from core.store import TERMINAL, RunStore
from core.summary import RunSummary

ADDRESS_ENV = "FREEZE_LAB_RAY_ADDRESS"  # "auto", "ray://host:10001", "host:6379", or "local"
GPUS_ENV = "FREEZE_LAB_RAY_GPUS_PER_MEMBER"  # GPUs each member asks for in the app (default 1; 0.5 shares one)
LOCAL = "local"  # a Ray instance started inside this process, for trying it out
POLL_S = 0.2  # how often a waiting member's thread drains the relay and looks at its stop request
STOP_CHECK_S = 0.1  # a member asks the relay whether to stop at most this often (one batch or less)
MAX_IN_FLIGHT = 64  # members handed to the cluster at once; Ray queues them by resources
KEEP_SHIPPED = 4  # datasets and weights kept in the object store for the next members
# Our code travels to the cluster's workers with the job (Ray uploads the package once): workers
# need torch and torchvision installed, not Freeze Lab.
RUNTIME_ENV = {"py_modules": [str(Path(core.__file__).parent)]}

log = logging.getLogger(__name__)


class ClusterError(ValueError):
    """The Ray cluster cannot be reached or used; the message is for the user."""


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    nodes: int  # alive nodes
    cpus: float
    gpus: float
    gpus_free: float


def _ray():
    import ray  # here, not at the top: only an app or a sweep that uses a cluster imports Ray

    return ray


def connect(address: str, *, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or start a local instance for ``"local"``), with our code for
    its workers (`RUNTIME_ENV`); `ClusterError` naming the address when it cannot be reached. A
    process that joined a cluster already (a test's local instance) keeps it; it passes
    `RUNTIME_ENV` to its own `ray.init`.

    `ray.init` runs in a thread of its own that then waits for the process to end: Ray's processes
    started from a thread that ends (a Streamlit page's script thread) stop answering, and a minute
    later the driver ends the whole server.
    """
    if address != LOCAL:
        check_reachable(address)  # Ray itself retries an address that does not answer for minutes
    ray = _ray()
    if ray.is_initialized():
        return  # one cluster per process: the one joined first (a test's local instance, say)
    joined, failure = threading.Event(), []

    def keeper() -> None:
        try:
            if address == LOCAL:
                ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=RUNTIME_ENV, logging_level=logging.WARNING)
            else:
                ray.init(address=address, runtime_env=RUNTIME_ENV, logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError, TimeoutError, Ray's own
            failure.append(exc)
        joined.set()
        if not failure:
            threading.Event().wait()  # lives as long as the process (a daemon thread)

    threading.Thread(target=keeper, name="freeze-lab-ray", daemon=True).start()
    joined.wait()
    if failure:
        first = (str(failure[0]).strip().splitlines() or [type(failure[0]).__name__])[0]
        raise ClusterError(f"Cannot reach the Ray cluster at {address!r}: {first}")


MAX_HOST = 253  # the longest DNS name


@dataclass(frozen=True)
class ClusterSettings:
    """The cluster the app is told to use: its address and the GPUs each member asks for."""

    address: str
    gpus_per_member: float = 1.0


def read_settings(environ) -> ClusterSettings | None:
    """`ADDRESS_ENV` and `GPUS_ENV` read once into a checked value, None when no address is set;
    `ClusterError` naming the setting for a malformed one (the sidebar shows it, every page works)."""
    address = environ.get(ADDRESS_ENV, "").strip()
    if not address:
        return None
    check_address(address)
    return ClusterSettings(address, checked_gpus(environ.get(GPUS_ENV, "1"), GPUS_ENV))


def check_address(address: str) -> None:
    """`ClusterError` unless `address` is auto, local, or [ray://]host:port with a plain port."""
    if address in ("auto", LOCAL):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and len(host) <= MAX_HOST and host.isascii() and port.isascii() and port.isdigit()
            and 0 < int(port) < 65536):
        raise ClusterError(f"{address[:80]!r} is not a Ray address: use auto, host:port, ray://host:port or local.")


def checked_gpus(value, name: str = "--gpus-per-member") -> float:
    """GPUs per member as Ray takes them: a share of one GPU (0 < g ≤ 1) or a whole number up to 64;
    `ClusterError` naming `name` otherwise (text, nan, inf, a negative or 1.5)."""
    try:
        gpus = float(value)
    except (TypeError, ValueError):
        gpus = float("nan")
    if not (0 < gpus <= 1 or (gpus.is_integer() and 1 <= gpus <= 64)):
        raise ClusterError(f"{name} must be a share of one GPU (0.5) or a whole number of GPUs up to 64, "
                           f"got {str(value)[:40]!r}.")
    return gpus


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """`ClusterError` unless something answers at `address`'s host and port (``"auto"``: the cluster
    `ray start` recorded on this machine, as Ray finds it)."""
    target = address.removeprefix("ray://")
    if address == "auto":
        recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        target = os.environ.get("RAY_ADDRESS") or (recorded.read_text().strip() if recorded.is_file() else "")
        if not target:
            raise ClusterError("No Ray cluster runs on this machine (start one with `ray start --head`), and "
                               "RAY_ADDRESS is not set.")
        target = target.removeprefix("ray://")
    check_address(target)
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA refuses
        raise ClusterError(f"Cannot reach the Ray cluster at {address!r}: nothing answers at {host}:{port} "
                           f"({exc.strerror or exc}).") from None


def cluster_info(address: str) -> ClusterInfo:
    """Nodes, CPUs and GPUs (free and in all) of the joined cluster."""
    ray = _ray()
    total, free = ray.cluster_resources(), ray.available_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return ClusterInfo(address, nodes, total.get("CPU", 0.0), total.get("GPU", 0.0), free.get("GPU", 0.0))


# --- inside the cluster ------------------------------------------------------------------------------


class Relay:
    """An actor between the app and its members: reports up, stop requests down."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple]] = []
        self.stopping: set[str] = set()

    def report(self, run_id: str, message: tuple) -> None:
        self.messages.append((run_id, message))

    def drain(self) -> list[tuple[str, tuple]]:
        out, self.messages = self.messages, []
        return out

    def stop(self, run_id: str) -> None:
        self.stopping.add(run_id)

    def should_stop(self, run_id: str) -> bool:
        return run_id in self.stopping


class RelayMonitor:
    """The `Monitor` a member's engine reports to: every report goes to the relay (no waiting)."""

    def __init__(self, relay, run_id: str, where: dict) -> None:
        self.relay, self.run_id, self.where = relay, run_id, where
        self._checked, self._stop = 0.0, False

    def on_start(self, info: dict) -> None:
        self.relay.report.remote(self.run_id, ("start", info | self.where))

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        self.relay.report.remote(self.run_id, ("step", step, epoch, loss))

    def on_epoch(self, record: dict) -> None:
        self.relay.report.remote(self.run_id, ("epoch", record))

    def should_stop(self) -> bool:
        if not self._stop and time.monotonic() - self._checked >= STOP_CHECK_S:
            self._stop = _ray().get(self.relay.should_stop.remote(self.run_id))
            self._checked = time.monotonic()
        return self._stop


def train_member(config: dict, dataset: DecodedDataset, split, weights, relay, run_id: str, threads: int):
    """One member, in a Ray worker: train on the shipped inputs; (summary dict, weights) back."""
    ray = _ray()
    torch.set_num_threads(threads)
    # the feature cache of this node (the app's data folder is not here)
    os.environ.setdefault("FREEZE_LAB_DATA_DIR", str(Path(tempfile.gettempdir()) / "freeze-lab-data"))
    gpus = [str(g) for g in ray.get_gpu_ids()]
    device = torch.device("cuda", 0) if gpus and torch.cuda.is_available() else torch.device("cpu")
    where = {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "gpus": gpus,
             "worker_pid": os.getpid()}
    result = train(RunConfig.from_dict(config), RelayMonitor(relay, run_id, where), device=device,
                   shipped=Shipped(dataset, split, weights))
    return result.summary.to_dict(), result.state_dict


# --- in the app ----------------------------------------------------------------------------------------


class RayTrainer:
    """A `TrainFn` (`core.jobs.execute` calls it as it calls `core.engine.train`) that trains on the cluster."""

    def __init__(self, executor: RayExecutor) -> None:
        self.executor = executor

    def __call__(self, config: RunConfig, monitor: RunMonitor, *, device=None, runs_dir: Path) -> TrainResult:
        ray, ex = _ray(), self.executor
        dataset, dataset_ref = ex.dataset(config)
        ref = ex.task.remote(config.to_dict(), dataset_ref, split_index(config, dataset), ex.weights(config, runs_dir),
                             ex.relay, monitor.run_id, ex.cpus_per_member)
        try:
            while not ray.wait([ref], timeout=POLL_S)[0]:
                ex.pump()
                if monitor.should_stop():
                    ex.relay.stop.remote(monitor.run_id)
                    if not monitor.info:  # still waiting for resources: it never starts
                        ray.cancel(ref)
            ex.pump()
            summary, state = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            raise RunCancelled("cancelled before it started on the cluster") from None
        except ray.exceptions.RayTaskError as exc:  # the member raised: its own exception, as a local run's
            raise (exc.cause if isinstance(exc.cause, BaseException) else RuntimeError(str(exc))) from None
        except ray.exceptions.RayError as exc:  # WorkerCrashedError, NodeDiedError, ...
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TrainingProcessDied(f"The Ray worker training this member died ({type(exc).__name__}: {first})") from None
        finally:
            ex.pump()
        return TrainResult(summary=RunSummary.from_dict(summary), state_dict=state)


class RayExecutor:
    """Runs on a Ray cluster with the job manager's `submit` / `cancel` (see the module docstring)."""

    def __init__(self, store: RunStore, address: str, *, gpus_per_member: float = 1.0, cpus_per_member: int = 1,
                 local_cpus: int | None = None) -> None:
        gpus_per_member = checked_gpus(gpus_per_member)  # before joining: a bad value starts nothing
        connect(address, num_cpus=local_cpus)
        ray = _ray()
        self.store, self.address = store, address
        self.cpus_per_member = cpus_per_member
        gpus = gpus_per_member if ray.cluster_resources().get("GPU", 0) > 0 else 0
        self.task = ray.remote(train_member).options(num_cpus=cpus_per_member, num_gpus=gpus, max_retries=0)
        self.relay = ray.remote(Relay).options(num_cpus=0).remote()
        self._trainer = RayTrainer(self)
        self._pool = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="freeze-lab-ray")
        self._lock, self._pump_lock, self._ship_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._monitors: dict[str, RunMonitor] = {}
        self._futures: dict[str, object] = {}
        self._shipped: OrderedDict[tuple, tuple] = OrderedDict()  # what was put once, for the next members

    def submit(self, config: RunConfig, *, owner: str = "", name: str | None = None) -> str:
        """Check `config`, create its queued run and hand it to the cluster; the run's id."""
        check_runnable(config, self.store)
        run_id = self.store.create(config, name=name, owner=owner)
        monitor = RunMonitor(self.store, run_id)
        with self._lock:
            self._monitors[run_id] = monitor
            self._futures[run_id] = self._pool.submit(self._execute, run_id, monitor)
        return run_id

    def cancel(self, run_id: str) -> bool:
        """Stop a member: a queued one never starts, a running one stops within a batch."""
        with self._lock:
            monitor = self._monitors.get(run_id)
        if monitor is None or monitor.status in TERMINAL:
            return False
        monitor.request_stop()
        self.relay.stop.remote(run_id)
        return True

    def wait(self, run_id: str, timeout: float | None = None) -> str | None:
        """Block until the run ends; its status (None on timeout)."""
        with self._lock:
            future = self._futures.get(run_id)
        if future is None:
            return self.store.load(run_id).status
        try:
            return future.result(timeout).status
        except TimeoutError:
            return None

    def shutdown(self) -> None:
        with self._lock:
            running = list(self._monitors)
        for run_id in running:
            self.cancel(run_id)
        self._pool.shutdown(wait=True, cancel_futures=False)

    # --- for RayTrainer ----------------------------------------------------------------------------
    def dataset(self, config: RunConfig) -> tuple[DecodedDataset, object]:
        """The dataset decoded and put in the object store once (per dataset and preprocessing)."""
        key = ("dataset", config.dataset, config.arch, config.weights == "imagenet", tuple(config.image_size))
        return self._put_once(key, lambda: decode_dataset(config))

    def weights(self, config: RunConfig, runs_dir: Path):
        return self._put_once(("weights", config.arch, config.weights), lambda: shipped_weights(config, runs_dir))[1]

    def pump(self) -> None:
        """Hand the members' reports to their monitors, in order (one drain at a time)."""
        with self._pump_lock:
            for run_id, (kind, *payload) in _ray().get(self.relay.drain.remote()):
                monitor = self._monitors.get(run_id)
                if monitor is not None:
                    getattr(monitor, f"on_{kind}")(*payload)

    def _put_once(self, key: tuple, make):
        """`make()` and its object-store reference, made once per key: the members' threads start
        together, and the others wait for the first one's decode instead of repeating it."""
        with self._ship_lock:
            if key in self._shipped:
                self._shipped.move_to_end(key)
                return self._shipped[key]
            value = make()
            self._shipped[key] = (value, _ray().put(value))
            while len(self._shipped) > KEEP_SHIPPED:
                self._shipped.popitem(last=False)
            return self._shipped[key]

    def _execute(self, run_id: str, monitor: RunMonitor):
        try:
            return execute(self.store, run_id, train_fn=self._trainer, device=torch.device("cpu"), monitor=monitor)
        finally:
            with self._lock:
                self._monitors.pop(run_id, None)


class ClusterLink:
    """The app's link to the cluster it is configured with: the executor once joined, else why not.

    A failed attempt is remembered for `RETRY_S` (the sidebar asks on every page), then tried again.
    """

    RETRY_S = 30.0

    def __init__(self, store: RunStore, address: str, gpus_per_member: float = 1.0) -> None:
        self.store, self.address, self.gpus_per_member = store, address, gpus_per_member
        self._executor: RayExecutor | None = None
        self._failure: tuple[float, ClusterError] | None = None
        self._lock = threading.Lock()

    def executor(self) -> RayExecutor:
        """The executor; `ClusterError` (a `ValueError` for the page) while the cluster cannot be reached."""
        with self._lock:
            if self._executor is None:
                if self._failure and time.monotonic() - self._failure[0] < self.RETRY_S:
                    raise self._failure[1]
                try:
                    self._executor = RayExecutor(self.store, self.address, gpus_per_member=self.gpus_per_member)
                except ClusterError as exc:
                    self._failure = (time.monotonic(), exc)
                    raise
            return self._executor

    def info(self) -> ClusterInfo:
        self.executor()
        return cluster_info(self.address)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown()
