"""Small helpers shared by the Streamlit pages: the run-config draft and cached resources.

Nothing here trains or computes; it only connects widgets to `core`.
"""
