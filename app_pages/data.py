"""Data page: choose the dataset of the run, see a preview, class counts and skipped files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core import data
from core.config import RunConfig, data_dir
from ui import services
from ui.session import draft as current_draft
from ui.session import remember_dataset, update_draft

SOURCES = {
    "demo-target": "Demo target (4 shapes, few images)",
    "demo-source": "Demo source (6 shapes, many images)",
    "demo-shift": "Demo shift (source shapes, washed out)",
    "demo-flip": "Demo flip (source shapes, labels permuted)",
    "folder": "Folder on this machine",
    "zip": "Upload a zip",
    "cifar10": "CIFAR-10 (download)",
    "flowers102": "Flowers102 (download)",
}
DEMO_SIZES = {"demo-source": (100, 300, 1000), "demo-target": (10, 30, 80), "demo-shift": (10, 30, 80),
              "demo-flip": (10, 30, 80)}  # images per class
MAX_UPLOAD_BYTES = 200 * 1024**2  # matches server.maxUploadSize in .streamlit/config.toml


def source_of(ref: str) -> str:
    """Which source option a dataset reference belongs to (to start the page from the draft)."""
    demo = data.parse_demo_ref(ref) if ref.split(":")[0] in data.DEMO_DATASETS else None
    return demo[0] if demo else ref if ref in SOURCES else "folder"


st.title("Data")
st.caption("The images the run trains, validates and is tested on. Every source becomes a folder with one subfolder per class.")
draft: RunConfig = current_draft()
root_dir = str(data_dir())

left, right = st.columns([2, 1])
source = left.radio(
    "Source", list(SOURCES), format_func=SOURCES.get, index=list(SOURCES).index(source_of(draft.dataset)),
    horizontal=True, key="data_source",
)
val_fraction = right.slider(
    "Validation share", 0.05, 0.5, float(draft.val_fraction), 0.05, key="data_val_fraction",
    help="Held out per class for validation (choosing the best epoch, strategy and rate), drawn with the run's "
    "seed from what the test split leaves. A dataset with its own val/ folder keeps it.",
)

ref = None
if source in data.DEMO_DATASETS:
    current = data.parse_demo_ref(draft.dataset) if source_of(draft.dataset) == source else None
    sizes = DEMO_SIZES[source]
    per_class = left.select_slider(
        "Images per class", sizes, value=current[1] if current and current[1] in sizes else data.demo.WORLDS[source][1],
        key=f"data_demo_size_{source}", help="Drawn once on this machine (no download); each size is kept in its own folder.",
    )
    ref = data.demo_ref(source, per_class)
    st.caption(data.demo.DESCRIPTIONS[source])
elif source == "folder":
    ref = left.text_input(
        "Folder path", value=draft.dataset if source_of(draft.dataset) == "folder" else "", key="data_folder",
        placeholder="/path/to/images  (class_a/*.jpg, class_b/*.jpg … or train/ and val/)",
    ).strip() or None
elif source == "zip":
    upload = left.file_uploader("Zip of class folders", type=["zip"], key="data_zip")
    if upload is not None:
        if upload.size > MAX_UPLOAD_BYTES:
            st.error(f"The zip is {upload.size / 1024**2:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 1024**2} MB.")
            st.stop()
        done = st.session_state.get("data_zip_root")
        if done and done[0] == upload.file_id:
            ref = done[1]
        else:
            try:
                with st.spinner("Checking and extracting the zip…"):
                    ref = str(data.import_zip(upload.getvalue(), Path(root_dir), name=upload.name))
            except data.DatasetError as exc:
                st.error(str(exc))
                st.stop()
            st.session_state["data_zip_root"] = (upload.file_id, ref)
else:  # a torchvision dataset: downloaded only on request
    left.info(
        f"{SOURCES[source].split(' (')[0]} is downloaded from the internet into `{root_dir}` once, then exported "
        "to a folder. Without a connection, use the demo dataset or your own folder or zip."
    )
    if draft.dataset == source or left.button("Download and use", key="data_download"):
        ref = source

if ref is None:
    st.info(f"Current dataset of the run: **{draft.dataset}** ({draft.num_classes} classes).")
    st.stop()

bar = st.empty()
try:
    ref, _ = data.prepare_dataset(
        ref, data_dir=Path(root_dir), progress=lambda done, total, msg: bar.progress(done / max(total, 1), text=msg)
    )
    ds = services.dataset(ref, draft.seed, val_fraction, draft.test_fraction, root_dir)
except data.DatasetError as exc:
    bar.empty()  # no empty "Downloading…" bar left under the error
    st.error(str(exc))
    st.stop()
bar.empty()

if (draft.dataset, draft.num_classes, draft.val_fraction) != (ds.ref, len(ds.classes), val_fraction):
    draft = update_draft(dataset=ds.ref, num_classes=len(ds.classes), val_fraction=val_fraction)
remember_dataset(ds)  # the classes and sizes, for the Model page

test_text = "its own test/ folder" if "test" in ds.given else f"{draft.test_fraction:.0%} per class, the same for every seed"
val_text = "its own val/ folder" if "val" in ds.given else f"{val_fraction:.0%} of the rest per class, seed {draft.seed}"
st.success(f"The run uses **{ds.ref}**: {len(ds.classes)} classes. Test: {test_text}, never used to choose; "
           f"validation: {val_text}.", icon=":material/check_circle:")
if gaps := ds.split_gaps():
    st.warning(
        "Some classes are in only one split: " + "; ".join(f"**{c}**: {why}" for c, why in gaps.items())
        + ". A class without training images cannot be learned; one without validation or test images is not "
        "measured there (its accuracy shows as \"no images\").",
        icon=":material/warning:",
    )
cols = st.columns(5)
cols[0].metric("Classes", len(ds.classes))
cols[1].metric("Train images", len(ds.train))
cols[2].metric("Validation images", len(ds.val))
cols[3].metric("Test images", len(ds.test), help="Held out: graded once per run, with the weights it keeps.")
cols[4].metric("Skipped files", len(ds.skipped))

st.subheader("Images per class")
counts = ds.counts().melt(id_vars="class", var_name="split", value_name="images")
fig = px.bar(counts, x="class", y="images", color="split", barmode="group", height=300)
fig.update_layout(margin=dict(l=0, r=0, t=10, b=0), legend_title_text="", xaxis_title=None)
st.plotly_chart(fig, key="data_counts_chart", width="stretch")

st.subheader("Preview")
shown = services.thumbnails(ds.ref, draft.seed, val_fraction, draft.test_fraction, root_dir)
for name, images in shown.items():
    label, pics = st.columns([1, 6], vertical_alignment="center")
    label.markdown(f"**{name}**")
    if images:
        pics.image(images, width=64, output_format="PNG")
if len(ds.classes) > len(shown):
    st.caption(f"First {len(shown)} of {len(ds.classes)} classes shown.")

if ds.skipped:
    with st.expander(f"{len(ds.skipped)} files skipped", icon=":material/warning:"):
        st.dataframe(pd.DataFrame(ds.skipped, columns=["file", "reason"]), hide_index=True, width="stretch")
