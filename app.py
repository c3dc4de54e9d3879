"""Freeze Lab: the entry point. A router over app_pages/ and a frame (title, sidebar)."""

import os
from pathlib import Path

import streamlit as st

from core.devices import describe_device
from core.jobs.ray_cluster import ClusterError
from ui.services import cluster_setting_problem, get_cluster, get_manager
from ui.session import keep_tab_in_url

# The favicon ships with the app: a material icon would be fetched from a font server, which fails offline.
FAVICON = str(Path(__file__).resolve().parent / "static" / "favicon.png")
st.set_page_config(page_title="Freeze Lab", page_icon=FAVICON, layout="wide")

PAGES = [
    st.Page("app_pages/model.py", title="Model", icon=":material/account_tree:", default=True),
    st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/classify.py", title="Classify", icon=":material/image_search:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("app_pages/sweep.py", title="Sweep", icon=":material/science:"),
]

page = st.navigation(PAGES)
keep_tab_in_url()  # a refresh of this tab keeps its draft and its runs

with st.sidebar:
    st.markdown("### :material/ac_unit: Freeze Lab")
    st.caption("Which layers should you fine-tune?")
    manager = get_manager()
    if manager.device.type == "cpu":
        st.markdown(f"**Compute device**  \nCPU: training uses {manager.threads} of {os.cpu_count()} cores",
                    help="One core is left to this web server and its viewers; set FREEZE_LAB_TRAIN_THREADS to change it.")
    else:
        st.markdown(f"**Compute device**  \n{describe_device(manager.device)}")
    if problem := cluster_setting_problem():
        st.error(f"**Ray cluster setting**  \n{problem} Sweeps run on this machine until it is fixed.",
                 icon=":material/cloud_off:")
    if (cluster := get_cluster()) is not None:
        try:
            info = cluster.info()
        except ClusterError as exc:
            st.error(f"**Ray cluster**  \n{exc} Sweeps wait for it: none starts until it answers.",
                     icon=":material/cloud_off:")
        else:
            st.markdown(f"**Ray cluster** for sweeps  \n`{info.address}`: {info.nodes} node{'s' * (info.nodes != 1)}, "
                        f"{info.cpus:g} CPUs, {info.gpus_free:g} of {info.gpus:g} GPUs free")

page.run()
