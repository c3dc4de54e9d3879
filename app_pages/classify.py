"""Classify page: upload images, see what one or several finished runs (and ImageNet) say about them."""

from __future__ import annotations

import streamlit as st

from core.analysis.compare import run_labels
from core.analysis.inference import (
    Classifier,
    classify,
    finished_runs,
    inference_device,
    top_k,
    weights_mtime,
)
from core.data import DatasetError, open_image
from core.models import (
    CATALOG,
    CheckpointError,
    WeightsUnavailableError,
    arch_spec,
    download_imagenet_weights,
    imagenet_available,
)
from ui import charts
from ui.services import get_manager, imagenet_classifier, run_classifier
from ui.session import forget_uploads, keep_runs, keep_uploads, kept_runs, kept_uploads

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp"]

manager = get_manager()


st.title("Classify")
st.caption("What does a fine-tuned model say about your picture? Each run uses the transforms it was trained with.")

runs = finished_runs(manager.store)
labels = dict(zip((r.id for r in runs), run_labels(runs)))
wanted = st.query_params.get("run")
kept = [run_id for run_id in kept_runs() if run_id in labels]  # this tab's choice, back from another page
default = [wanted] if wanted in labels else kept or [r.id for r in runs[:1]]

files = st.file_uploader("Images (JPEG, PNG, WebP, BMP)", type=IMAGE_TYPES, accept_multiple_files=True,
                         key="classify_files")
if files:
    files = keep_uploads(files)
elif files := kept_uploads():  # the uploader forgets its files when the tab visits another page
    left, right = st.columns([4, 1], vertical_alignment="center")
    left.caption(f"Showing the {len(files)} image(s) you uploaded before: {', '.join(f.name for f in files[:5])}"
                 f"{' …' if len(files) > 5 else ''}. Upload others to replace them.")
    if right.button("Clear them", key="classify_clear", icon=":material/close:"):
        forget_uploads()
        st.rerun()
chosen = st.multiselect("Runs", list(labels), default=default, format_func=labels.get, key="classify_runs",
                          placeholder="Pick finished runs" if runs else "No finished run yet: train one on the Train page")
keep_runs(chosen)
mid, right = st.columns([4, 1])
use_imagenet = mid.toggle("Original ImageNet model", key="classify_imagenet",
                          help="The architecture with torchvision's ImageNet weights and its 1000 categories.")
k = right.number_input("Top k", 1, 10, 3, key="classify_k")

busy = bool(manager.active_runs())
models: list[tuple[str, Classifier]] = []  # (cache key, classifier)
devices_used: set[str] = set()
for run_id in chosen:
    record = manager.store.load(run_id)
    device, why = inference_device(record.summary.device, manager.device, busy)
    devices_used.add(why)
    try:
        clf = run_classifier(run_id, weights_mtime(record), str(device), record.summary.precision or "fp32")
    except (CheckpointError, WeightsUnavailableError, ValueError) as exc:
        st.error(f"**{record.name}**: {exc}", icon=":material/error:")
    else:
        models.append((f"run:{run_id}:{weights_mtime(record)}:{device}", clf))

if use_imagenet:
    default_arch = manager.store.load(chosen[0]).config.arch if chosen else "resnet18"
    arch = st.selectbox("ImageNet architecture", list(CATALOG), list(CATALOG).index(default_arch),
                        format_func=lambda a: arch_spec(a).label, key="classify_imagenet_arch")
    device, why = inference_device(str(manager.device), manager.device, busy)
    if imagenet_available(arch):
        devices_used.add(why)
        models.append((f"imagenet:{arch}:{device}", imagenet_classifier(arch, str(device))))
    else:
        st.info(f"The ImageNet weights of {arch_spec(arch).label} are not on this machine. Offline, classify "
                "with your runs only; online, download them once (into torch's hub cache).",
                icon=":material/cloud_off:")
        if st.button(f"Download the ImageNet weights of {arch_spec(arch).label}", key="classify_download",
                     icon=":material/download:"):
            bar = st.progress(0.0, text="Downloading…")
            try:
                download_imagenet_weights(arch, lambda done, total: bar.progress(
                    min(1.0, done / total) if total else 0.0, text=f"Downloading… {done / 2**20:.0f} MiB"))
            except WeightsUnavailableError as exc:
                st.error(str(exc), icon=":material/cloud_off:")
            else:
                st.rerun()

for why in sorted(devices_used):
    st.caption(f":material/memory: Inference runs {why}.")

# --- the images -------------------------------------------------------------------------------
images = []
for f in files or []:
    try:
        images.append((f, open_image(f.getvalue())))
    except DatasetError as exc:
        st.error(f"**{f.name}** cannot be classified: {exc}", icon=":material/broken_image:")

if not images or not models:
    st.info("Upload one or more images and pick at least one finished run (or the ImageNet model).",
            icon=":material/info:")
    st.stop()

current = {f.file_id for f, _ in images}
memo = {key: p for key, p in st.session_state.get("classify_memo", {}).items() if key[0] in current}
st.session_state["classify_memo"] = memo  # (file id, model key) -> probabilities, for the images shown
for model_key, clf in models:
    todo = [(f, img) for f, img in images if (f.file_id, model_key) not in memo]
    if todo:
        with st.spinner(f"Classifying {len(todo)} image(s) with {clf.label}…"):
            probs = classify(clf.model, [img for _, img in todo], clf.pre, clf.device, clf.precision)
        for (f, _), p in zip(todo, probs.tolist()):
            memo[(f.file_id, model_key)] = p

for i, (f, img) in enumerate(images):
    with st.container(border=True):
        cols = st.columns([1.3] + [2] * len(models))
        cols[0].image(img, caption=f.name, width=min(192, max(96, img.width)))
        cols[0].caption(f"{img.width}×{img.height} px")
        for j, (model_key, clf) in enumerate(models):
            probs = memo[(f.file_id, model_key)]
            pairs = top_k(probs, clf.classes, int(k))
            cols[j + 1].plotly_chart(charts.top_k_figure(pairs, clf.label), key=f"classify_bar_{i}_{j}",
                                     width="stretch")
st.caption(f"Top-{int(k)} classes with softmax probabilities; {len(images)} image(s), {len(models)} model(s).")
