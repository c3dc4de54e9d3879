"""Freeze Lab core: models, freezing, costs, data, training, jobs and runs.

Everything here is importable and testable without Streamlit.
"""
