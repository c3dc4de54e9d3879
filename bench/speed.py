"""Freeze Lab's engine against the tutorials' fine-tuning loop, on the same JPEG files and device.

    python bench/speed.py                      # the GPU benchmark (VGG-19, ResNet-50, 224 px)
    python bench/speed.py --quick              # CPU smoke run: ResNet-18, 64 px, few images
    python bench/speed.py --cpu-target         # ResNet-18 / 64 px / demo-target head-only, 10 epochs

Per case (architecture x freezing preset) three runs, each in its own
process (so peak memory is per run and one crash or OOM leaves the others
alone):

(a) reference: `bench/reference.py`, the loop of PyTorch's transfer-learning
    tutorial (ImageFolder + PIL transforms + DataLoader with
    ``min(8, cpu count)`` workers, ``pin_memory`` on CUDA, fp32);
(b) engine: `core.engine.train` with a `RunConfig` (decoded uint8 cache
    on the device, feature cache over the frozen prefix, bf16 autocast and
    channels_last on CUDA), weights ``none`` for both (timing does not
    depend on the values), with no stored prefix features: the run computes
    them (and stores them);
(b2) engine again, frozen presets only: the same run once more, now reading
    the prefix features stored by (b) from disk, as a user's next run on the
    same backbone and data does (another head, learning rate or epoch count);
(s) synthetic: the engine's model step (same frozen set, BatchNorm modes,
    optimizer, precision and layout) on random tensors already on the
    device, no data at all: the device's own limit for a step of the whole
    network. With the feature cache the engine runs only the trainable tail
    and can exceed it.

Data: the demo-source world (`core.data`) drawn with enough images per
class, resized to the input size and written as JPEG files in the
tutorials' layout ``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``
(80/20, stratified). Both loops read that folder. The engine's one-time
decode into its uint8 cache (kept on disk across runs, as in the app) is
done and timed before the cases and reported separately.

Reported per run: train images/s (mean over epochs 2+; epoch 1 of the engine
includes cuDNN autotuning and building the feature cache), first-epoch and
mean later epoch time (train + val), total wall time of the run (data setup,
model build, all epochs; not interpreter start), peak memory
(`torch.cuda.max_memory_allocated`, or the process's peak RSS on the CPU).
Per case: (b)/(a) in images/s and in wall time, the engine against the
synthetic step, and the Model page's memory estimates with their errors
against the measured peaks: for (b) the whole run (`core.estimate.run_memory`,
computed in the worker before the run: resident images and cached features,
the feature pass, training steps, evaluation), for (s) and (a) one training
step of the whole network (`core.estimate.estimate`; bf16 on CUDA for (s), fp32
with BatchNorm in train mode for the reference). None of them counts cuDNN's
and cuBLAS's workspaces, which the measured CUDA peaks include.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT_TAG = "@@RESULT "
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "freeze-lab-bench"


def log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data on disk


def _export(job: tuple[str, str, int, str]) -> None:
    from PIL import Image

    src, dst, size, fmt = job
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "copy":
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        img.save(dst, "JPEG", quality=90)


def make_split_folder(world: str, per_class: int | None, size: int, fmt: str, workdir: Path) -> Path:
    """A demo world as ``root/{train,val}/<class>/<file>`` (the engine's own 80/20 split).

    fmt "jpeg": resized to size x size and re-encoded as JPEG (quality 90);
    fmt "copy": the demo's PNG files as they are. Reused when already there.
    """
    from core.data import load_dataset
    from core.data.demo import WORLDS

    per_class = per_class or WORLDS[world][1]  # the size in the name: a new default makes a new folder
    tag = f"{world}-{per_class}-{size if fmt == 'jpeg' else 'png'}"
    out = workdir / f"images-{tag}"
    if (out / ".complete").exists():
        return out
    ds = load_dataset(world, data_dir=workdir / "demo", demo_per_class=per_class)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = []
    for split, samples in (("train", ds.train), ("val", ds.val)):
        for s in samples:
            name = s.path.stem + (".jpg" if fmt == "jpeg" else s.path.suffix)
            jobs.append((str(s.path), str(tmp / split / ds.classes[s.label] / name), size, fmt))
    t0 = time.perf_counter()
    with Pool(max(1, min(8, os.cpu_count() or 1))) as pool:
        pool.map(_export, jobs, chunksize=32)
    (tmp / ".complete").write_text(json.dumps({"world": world, "per_class": per_class, "size": size, "fmt": fmt}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"wrote {len(jobs)} {fmt} images to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def clear_stored_features(data_dir: Path) -> None:
    """Delete the prefix features earlier runs stored (`core.engine.features`), so the next engine run computes them."""
    for path in (data_dir / ".cache").glob("features-*.pt"):
        path.unlink()


def timing_note(timings: dict | None) -> str:
    if not timings:
        return ""
    parts = [("data", "data_s"), ("model", "model_s"), ("features", "features_s"), ("epochs", "epochs_s"),
             ("finish", "finish_s")]
    return "; " + ", ".join(f"{label} {timings[key]:.2f} s" for label, key in parts if key in timings)


def warm_engine_cache(root: Path, arch: str, size: int, data_dir: Path) -> tuple[float, int, int, int]:
    """Build the engine's on-disk index and decoded uint8 cache once; (seconds, classes, train, val)."""
    from core.data import decode_images, load_dataset, preprocess_for

    t0 = time.perf_counter()
    ds = load_dataset(str(root), data_dir=data_dir)
    pre = preprocess_for(arch, "none", (size, size))
    for samples in (ds.train, ds.val):
        decode_images([s.path for s in samples], pre, data_dir=data_dir)
    return time.perf_counter() - t0, len(ds.classes), len(ds.train), len(ds.val)


# --------------------------------------------------------------------------- worker side (one run per process)


def _device(name: str):
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    return device


def _peak(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _frozen(arch: str, num_classes: int, preset: str) -> tuple[str, ...]:
    from core.freezing import preset_frozen
    from core.models import build_skeleton

    return preset_frozen(build_skeleton(arch, num_classes), arch, preset)


def _amp_dtype(device):
    import torch

    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def run_reference(spec: dict) -> dict:
    import torch
    from torch import nn

    from bench.reference import train_model, tutorial_loaders
    from core.freezing import set_frozen
    from core.models import prepare_model

    device = _device(spec["device"])
    t0 = time.perf_counter()
    image_datasets, loaders = tutorial_loaders(
        Path(spec["root"]), spec["size"], spec["batch_size"], spec["workers"], pin_memory=device.type == "cuda"
    )
    sizes = {x: len(image_datasets[x]) for x in ("train", "val")}
    model, _ = prepare_model(spec["arch"], spec["num_classes"], "none")
    set_frozen(model, _frozen(spec["arch"], spec["num_classes"], spec["preset"]))
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)

    def on_epoch(r):
        log(f"  reference epoch {r['epoch']}: {r['epoch_time_s']:.2f} s, {r['images_per_s']:.0f} img/s")

    history = train_model(model, criterion, optimizer, scheduler, loaders, sizes, device, spec["epochs"], on_epoch)
    return {
        "epochs": [{k: r[k] for k in ("epoch", "epoch_time_s", "images_per_s", "val_acc")} for r in history],
        "total_s": time.perf_counter() - t0,
        "peak_mem_bytes": _peak(device),
        "train_size": sizes["train"],
        "val_size": sizes["val"],
        "precision": "fp32",
        "note": f"{spec['workers']} workers",
    }


class _Monitor:
    """The smallest `core.jobs.Monitor`: keeps the start info, logs epochs."""

    def __init__(self) -> None:
        self.info: dict = {}
        self.records: list[dict] = []

    def on_start(self, info: dict) -> None:
        self.info = info

    def on_step(self, step: int, epoch: int, loss: float) -> None:
        pass

    def on_epoch(self, record: dict) -> None:
        self.records.append({k: record[k] for k in ("epoch", "epoch_time_s", "images_per_s", "val_acc")})
        log(f"  engine epoch {record['epoch']}: {record['epoch_time_s']:.2f} s, {record['images_per_s']:.0f} img/s")

    def should_stop(self) -> bool:
        return False


def _run_estimate(config, device):
    """The Model page's estimate of the run's peak device memory (`core.estimate.run_memory`)."""
    from core.data import load_dataset
    from core.estimate import cost_profile, run_memory

    ds = load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed)
    profile = cost_profile(config.arch, config.num_classes, config.image_size)
    return run_memory(profile, config, train_images=len(ds.train), val_images=len(ds.val), device=device)


def run_engine(spec: dict) -> dict:
    from core.config import RunConfig
    from core.engine import train

    device = _device(spec["device"])
    config = RunConfig(
        arch=spec["arch"], weights="none", num_classes=spec["num_classes"],
        frozen=_frozen(spec["arch"], spec["num_classes"], spec["preset"]), preset=spec["preset"],
        dataset=str(spec["root"]), image_size=(spec["size"], spec["size"]), augment=(),
        optimizer="sgd", lr=0.01, epochs=spec["epochs"], batch_size=spec["batch_size"],
        precision="auto", feature_cache=spec.get("feature_cache", True),
    )  # fmt: skip
    estimate = _run_estimate(config, device)  # before the run: what the Model page would show for it
    monitor = _Monitor()
    t0 = time.perf_counter()
    result = train(config, monitor, device=device, runs_dir=Path(spec["workdir"]) / "runs")
    total = time.perf_counter() - t0
    s = result.summary
    cache = s.get("feature_cache") or {}
    source = "read from disk" if cache.get("source") == "disk" else "built"
    return {
        "epochs": monitor.records,
        "total_s": total,
        "peak_mem_bytes": _peak(device),
        "train_size": s["train_size"],
        "val_size": s["val_size"],
        "precision": s["precision"],
        "estimate_bytes": estimate.peak_bytes,
        "estimate_moment": estimate.peak_moment,
        "note": (f"feature cache up to {cache['prefix']} ({source} in {cache.get('build_s', 0):.2f} s)"
                 if cache.get("used") else f"no feature cache ({cache.get('reason')})") + timing_note(s.get("timings")),
        "freeze_audit_ok": (s.get("freeze_audit") or {}).get("ok"),
        "timings": s.get("timings"),
    }


def run_synthetic(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from core.config import RunConfig
    from core.engine import build_optimizer
    from core.freezing import set_frozen, set_train_mode
    from core.models import prepare_model

    device = _device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    frozen = _frozen(spec["arch"], spec["num_classes"], spec["preset"])
    model, _ = prepare_model(spec["arch"], spec["num_classes"], "none")
    set_frozen(model, frozen)
    model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    set_train_mode(model, True)
    config = RunConfig(arch=spec["arch"], num_classes=spec["num_classes"], frozen=frozen, optimizer="sgd", lr=0.01)
    optimizer, _ = build_optimizer(model, config)
    amp = _amp_dtype(device)
    b, size = spec["batch_size"], spec["size"]
    x = torch.randn(b, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(spec["num_classes"], (b,), device=device)

    def step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def timed(n: int) -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(n):
            step()
        _sync(device)
        return time.perf_counter() - t

    timed(3)  # warm-up: cuDNN autotuning, allocator, optimizer state
    per = timed(3) / 3
    n = max(5, min(500, int(spec.get("synthetic_s", 2.0) / max(per, 1e-6))))
    elapsed = timed(n)
    return {
        "images_per_s": n * b / elapsed,
        "steps": n,
        "peak_mem_bytes": _peak(device),
        "precision": "bf16" if amp else "fp32",
    }


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    fn = {"reference": run_reference, "engine": run_engine, "synthetic": run_synthetic}[spec["kind"]]
    result = fn(spec)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- parent side


def launch(spec: dict, env: dict, timeout: float) -> dict:
    """Run one worker process; its result dict, or {"error": ...}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode} (see stderr above)"}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_s"] = time.perf_counter() - t0
    return result


def steady(result: dict, key: str) -> float | None:
    """Mean of `key` over epochs 2+ (epoch 1 when there is only one)."""
    epochs = result.get("epochs") or []
    values = [e[key] for e in epochs[1:]] or [e[key] for e in epochs[:1]]
    return statistics.fmean(values) if values else None


def first(result: dict, key: str) -> float | None:
    epochs = result.get("epochs") or []
    return epochs[0][key] if epochs else None


def fmt_num(x: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "–" if x is None else f"{x:{spec}}{suffix}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fmt_err(est: float | None, measured: float | None) -> str:
    if est is None or not measured:
        return "–"
    return f"{100 * (est / measured - 1):+.0f}%"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.1f}x"


def share(a: float | None, b: float | None) -> str:
    """a as a percentage of b (as a multiple when it is over 10x)."""
    if a is None or not b:
        return "–"
    return f"{100 * a / b:.0f}%" if a < 10 * b else f"{a / b:.0f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def run_row(label: str, r: dict | None, epochs: int | None) -> list[str]:
    if r is None or "error" in r:
        return [label, str(epochs or "–"), f"failed: {r['error']}" if r else "not run", *["–"] * 6]
    return [
        label, str(epochs), fmt_num(steady(r, "images_per_s")), fmt_num(first(r, "epoch_time_s"), ".2f"),
        fmt_num(steady(r, "epoch_time_s"), ".2f"), fmt_num(r.get("total_s"), ".1f"),
        fmt_bytes(r.get("peak_mem_bytes")), r.get("precision", ""), r.get("note", ""),
    ]


def estimates(arch: str, num_classes: int, size: int, preset: str, batch_size: int, cuda: bool, profiles: dict):
    """The per-step memory estimate (`core.estimate.estimate`) of the whole network: for the synthetic step
    (bf16 on CUDA, frozen BatchNorm in eval mode) and for the reference (fp32, BatchNorm trains)."""
    from core.estimate import cost_profile, estimate

    key = (arch, num_classes, size)
    if key not in profiles:
        profiles[key] = cost_profile(arch, num_classes, (size, size))
    frozen = _frozen(arch, num_classes, preset)
    engine = estimate(profiles[key], frozen, optimizer="sgd", batch_size=batch_size,
                      precision="bf16" if cuda else "fp32", bn_frozen_eval=True)
    reference = estimate(profiles[key], frozen, optimizer="sgd", batch_size=batch_size, precision="fp32",
                         bn_frozen_eval=False)
    return engine.total_bytes, reference.total_bytes


def write_out(args, text: str) -> None:
    """Write `text` under the command that made it to --out, if given."""
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"`{args.command}`\n\n{text}")


def benchmark(args, env: dict, workdir: Path) -> str:
    import torch

    from core.models import arch_spec

    cuda = args.device.startswith("cuda")
    per_class = max(2, math.ceil(args.images / 6))
    root = make_split_folder("demo-source", per_class, args.size, "jpeg", workdir)
    data_dir = Path(env["FREEZE_LAB_DATA_DIR"])
    decode_s, num_classes, n_train, n_val = warm_engine_cache(root, args.archs[0], args.size, data_dir)
    for arch in args.archs[1:]:
        warm_engine_cache(root, arch, args.size, data_dir)
    log(f"dataset {root}: {n_train} train / {n_val} val JPEG images, {num_classes} classes; "
        f"engine's one-time decode into its uint8 cache: {decode_s:.1f} s")
    workers = min(8, os.cpu_count() or 1)
    cases = [(a, p) for a in args.archs for p in args.presets if p != "fc1_fc2" or arch_spec(a).family == "vgg"]
    profiles: dict = {}
    runs_rows, case_rows = [], []
    t_all = time.perf_counter()

    def report() -> str:
        """The tables of the cases done so far (written to --out after each case, so a cut-off run keeps them)."""
        device_name = torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        head = (f"Device: {device_name}; torch {torch.__version__}; {n_train} train / {n_val} val JPEG images "
                f"({args.size}x{args.size}, {num_classes} classes), batch {args.batch_size}; reference: {workers} "
                f"DataLoader workers, fp32; engine: precision auto ({'bf16 autocast, channels_last' if cuda else 'fp32'}); "
                f"engine's one-time decode of the JPEGs into its uint8 cache (kept on disk, not in the runs' times; "
                f"near 0 when an earlier invocation made it): {decode_s:.1f} s; benchmark wall time {time.perf_counter() - t_all:.0f} s"
                + (f"; partial: {len(case_rows)} of {len(cases)} cases so far." if len(case_rows) < len(cases) else "."))
        runs = table(["run", "epochs", "train img/s (epochs 2+)", "epoch 1 (s)", "epochs 2+ (s, mean)", "total wall (s)",
                      "peak memory", "precision", "notes"], runs_rows)
        summary = table(["model", "preset", "epochs", "(b)/(a) img/s", "(b)/(a) wall-time speed-up",
                         "(b2)/(a) wall-time speed-up", "synthetic img/s",
                         "(b) / synthetic", "est. run peak (b)", "at", "est. err vs (b) peak",
                         "est. step (s)", "est. err vs (s) peak", "est. step (a)", "est. err vs (a) peak"], case_rows)
        notes = ("(b)/(a) img/s: train images/s over epochs 2+. Wall-time speed-up: (a)'s total wall time over (b)'s "
                 "(or (b2)'s: the next run on the same frozen prefix, which reads the features (b) stored). "
                 "(b) / synthetic: the engine's epochs 2+ images/s against the synthetic whole-network step (over 100% "
                 "when the feature cache leaves only the tail to run). Estimate errors are (estimate / measured - 1). "
                 "Est. run peak (b): the Model page's estimate of the whole run (core.estimate.run_memory: images and "
                 "cached features on the device, the feature pass, training steps, evaluation), taken in the worker "
                 "before the run, and the moment it expects the peak; est. step: one training step of the whole "
                 "network (core.estimate.estimate), against the synthetic step and the reference.")
        if not cuda:
            notes += (" On the CPU the measured peak is the worker process's peak RSS, mostly the Python and torch "
                      "runtime itself, so the memory-estimate errors say little there.")
        return f"{head}\n\n{runs}\n\n{summary}\n\n{notes}\n"

    for i, (arch, preset) in enumerate(cases, 1):
        epochs = args.epochs_full if preset == "full" else args.epochs_frozen
        base = {"arch": arch, "preset": preset, "epochs": epochs, "batch_size": args.batch_size, "size": args.size,
                "root": str(root), "num_classes": num_classes, "device": args.device, "workers": workers,
                "workdir": str(workdir), "synthetic_s": 1.0 if args.quick else 2.0}
        results = {}
        kinds = ("reference", "engine", "engine2", "synthetic") if preset != "full" else ("reference", "engine", "synthetic")
        for kind in kinds:
            log(f"case {i}/{len(cases)} {arch} {preset} ({epochs} epochs): {kind} ...")
            if kind == "engine":
                clear_stored_features(data_dir)
            try:
                results[kind] = launch(base | {"kind": "engine" if kind == "engine2" else kind}, env, args.timeout)
            except Exception as exc:  # noqa: BLE001 - one failure must not end the benchmark
                traceback.print_exc()
                results[kind] = {"error": f"{type(exc).__name__}: {exc}"}
            r = results[kind]
            log(f"  {kind}: " + (r["error"] if "error" in r else
                (f"{r['total_s']:.1f} s, " if "total_s" in r else "") +
                f"{steady(r, 'images_per_s') or r.get('images_per_s', 0):.0f} img/s, "
                f"peak {fmt_bytes(r.get('peak_mem_bytes'))}"))
        ref, eng, syn = results["reference"], results["engine"], results["synthetic"]
        eng2 = results.get("engine2")
        ok = lambda r: r is not None and "error" not in r  # noqa: E731
        runs_rows.append(run_row(f"{arch} · {preset} · (a) reference", ref, epochs))
        runs_rows.append(run_row(f"{arch} · {preset} · (b) engine", eng, epochs))
        if eng2 is not None:
            runs_rows.append(run_row(f"{arch} · {preset} · (b2) engine, next run", eng2, epochs))
        runs_rows.append([f"{arch} · {preset} · (s) synthetic step", "–",
                          fmt_num(syn.get("images_per_s")) if ok(syn) else f"failed: {syn['error']}",
                          "–", "–", "–", fmt_bytes(syn.get("peak_mem_bytes")), syn.get("precision", ""),
                          f"{syn['steps']} steps of batch {args.batch_size}, random input on the device" if ok(syn) else ""])
        try:
            est_b, est_a = estimates(arch, num_classes, args.size, preset, args.batch_size, cuda, profiles)
        except Exception as exc:  # noqa: BLE001
            log(f"  estimate failed: {type(exc).__name__}: {exc}")
            est_b = est_a = None
        e_ips = steady(eng, "images_per_s") if ok(eng) else None
        a_ips = steady(ref, "images_per_s") if ok(ref) else None
        e_peak = eng.get("peak_mem_bytes") if ok(eng) else None
        est_run = eng.get("estimate_bytes") if ok(eng) else None
        case_rows.append([
            arch, preset, str(epochs),
            ratio(e_ips, a_ips),
            ratio(ref.get("total_s") if ok(ref) else None, eng.get("total_s") if ok(eng) else None),
            ratio(ref.get("total_s") if ok(ref) else None, eng2.get("total_s") if ok(eng2) else None),
            fmt_num(syn.get("images_per_s")) if ok(syn) else "–",
            share(e_ips, syn.get("images_per_s") if ok(syn) else None),
            fmt_bytes(est_run), eng.get("estimate_moment", "–") if ok(eng) else "–", fmt_err(est_run, e_peak),
            fmt_bytes(est_b), fmt_err(est_b, syn.get("peak_mem_bytes") if ok(syn) else None),
            fmt_bytes(est_a), fmt_err(est_a, ref.get("peak_mem_bytes") if ok(ref) else None),
        ])
        write_out(args, report())
    return report()


def cpu_target(args, env: dict, workdir: Path) -> str:
    """ResNet-18 / 64 px / demo-target head-only, 10 epochs: engine with and without feature cache, reference.

    (b) starts with no stored prefix features and computes them; (b2) is the
    next run on the same backbone and data, reading the features (b) stored.
    """
    root = make_split_folder("demo-target", None, 64, "copy", workdir)
    data_dir = Path(env["FREEZE_LAB_DATA_DIR"])
    decode_s, num_classes, n_train, n_val = warm_engine_cache(root, "resnet18", 64, data_dir)
    base = {"arch": "resnet18", "preset": "head", "epochs": 10, "batch_size": args.batch_size, "size": 64,
            "root": str(root), "num_classes": num_classes, "device": "cpu", "workers": min(8, os.cpu_count() or 1),
            "workdir": str(workdir)}
    variants = [
        ("(b) engine, feature cache", base | {"kind": "engine", "feature_cache": True}),
        ("(b2) engine, next run: features from disk", base | {"kind": "engine", "feature_cache": True}),
        ("(b') engine, feature_cache=False", base | {"kind": "engine", "feature_cache": False}),
        ("(a) reference loop", base | {"kind": "reference"}),
    ]
    results = {}
    for label, spec in variants:
        tries = []
        for rep in range(args.repeats):
            log(f"cpu target: {label}, try {rep + 1}/{args.repeats} ...")
            if label.startswith("(b) "):
                clear_stored_features(data_dir)
            elif label.startswith("(b2)"):  # the features of a first run are on disk
                clear_stored_features(data_dir)
                launch(variants[0][1], env, args.timeout)
            tries.append(launch(spec, env, args.timeout))
        good = sorted((r for r in tries if "error" not in r), key=lambda r: r["total_s"])
        results[label] = good[len(good) // 2] if good else tries[-1]  # the median try by total wall time
    fast = results[variants[0][0]]
    rows = []
    for label, _ in variants:
        r = results[label]
        if "error" in r:
            rows.append([label, f"failed: {r['error']}", *["–"] * 7])
            continue
        train_sum = sum(e["epoch_time_s"] for e in r["epochs"])
        rows.append([
            label, fmt_num(steady(r, "images_per_s")), fmt_num(first(r, "epoch_time_s"), ".3f"),
            fmt_num(steady(r, "epoch_time_s"), ".3f"), fmt_num(train_sum, ".2f"), fmt_num(r["total_s"], ".2f"),
            ratio(train_sum, sum(e["epoch_time_s"] for e in fast["epochs"])) if "error" not in fast else "–",
            ratio(r["total_s"], fast["total_s"]) if "error" not in fast else "–",
            timing_note(r.get("timings")).lstrip("; ") or "–",
        ])
    head = (f"CPU target: resnet18, head only, 64 px, demo-target ({n_train} train / {n_val} val, {num_classes} "
            f"classes), 10 epochs, batch {args.batch_size}, {os.cpu_count()} CPU cores, weights none; median of "
            f"{args.repeats} tries by total wall time; the engine's decode cache was warm (one-time decode "
            f"{decode_s:.2f} s).")
    return head + "\n\n" + table(
        ["run", "train img/s (epochs 2+)", "epoch 1 (s)", "epochs 2+ (s, mean)", "10 epochs (s)", "total wall (s)",
         "epochs: slower than (b) by", "total wall: slower than (b) by", "engine's wall time by part"], rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=None, help="default: vgg19 resnet50 (--quick: resnet18)")
    p.add_argument("--presets", nargs="+", default=None,
                   help="default: full classifier fc1_fc2 head (fc1_fc2 only for VGG; --quick: full head)")
    p.add_argument("--epochs-full", type=int, default=None, help="epochs of the full fine-tune cases (default 3; --quick 2)")
    p.add_argument("--epochs-frozen", type=int, default=None, help="epochs of the frozen-preset cases (default 10; --quick 2)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (--quick and --cpu-target: 32)")
    p.add_argument("--images", type=int, default=None, help="images written to disk, train + val (default 2400; --quick 240)")
    p.add_argument("--size", type=int, default=None, help="input size in px (default 224; --quick 64)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables as Markdown to this file")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run: resnet18, 64 px, 240 images, 2 epochs")
    p.add_argument("--cpu-target", action="store_true",
                   help="the CPU target: resnet18 / 64 px / demo-target head-only over 10 epochs, feature cache on/off, reference")
    p.add_argument("--repeats", type=int, default=3, help="tries per run in --cpu-target (the median is reported)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"generated data and caches (default {DEFAULT_WORKDIR})")
    p.add_argument("--timeout", type=float, default=600, help="seconds one run may take before it is reported as failed")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)

    import torch

    quick = args.quick
    args.archs = args.archs or (["resnet18"] if quick else ["vgg19", "resnet50"])
    args.presets = args.presets or (["full", "head"] if quick else ["full", "classifier", "fc1_fc2", "head"])
    args.epochs_full = args.epochs_full or (2 if quick else 3)
    args.epochs_frozen = args.epochs_frozen or (2 if quick else 10)
    args.batch_size = args.batch_size or (32 if quick or args.cpu_target else 64)
    args.images = args.images or (240 if quick else 2400)
    args.size = args.size or (64 if quick else 224)
    args.device = args.device or ("cpu" if quick or args.cpu_target else ("cuda" if torch.cuda.is_available() else "cpu"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FREEZE_LAB_DATA_DIR"] = str(args.workdir / "freeze-lab-data")
    env["FREEZE_LAB_RUNS_DIR"] = str(args.workdir / "runs")
    env.pop("FREEZE_LAB_FAULT", None)
    args.command = ("python bench/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    t0 = time.perf_counter()
    text = cpu_target(args, env, args.workdir) if args.cpu_target else benchmark(args, env, args.workdir)
    print(f"\n`{args.command}`\n\n{text}")
    log(f"done in {time.perf_counter() - t0:.0f} s")
    write_out(args, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
