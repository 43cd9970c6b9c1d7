"""The Weights page at `/weights`, for browser tests while the app's navigation does not list it (a
default page answers at `/` only, so the Weights page is the second one here)."""

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[2]


def home() -> None:
    st.write("Weights test app")


st.navigation([
    st.Page(home, title="Home", url_path="home", default=True),
    st.Page(ROOT / "pages" / "weights.py", title="Weights", url_path="weights"),
]).run()
