"""Freeze Lab: the entry point. A router over app_pages/ and a frame (title, sidebar)."""

import streamlit as st

from core.devices import describe_device

st.set_page_config(page_title="Freeze Lab", page_icon=":material/ac_unit:", layout="wide")

PAGES = [
    st.Page("app_pages/model.py", title="Model", icon=":material/account_tree:", default=True),
    st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/classify.py", title="Classify", icon=":material/image_search:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
]

page = st.navigation(PAGES)

with st.sidebar:
    st.markdown("### :material/ac_unit: Freeze Lab")
    st.caption("Which layers should you fine-tune?")
    st.markdown(f"**Compute device**  \n{describe_device()}")

page.run()
