"""Driving the app's pages in-process with Streamlit's AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60


@pytest.fixture
def fresh_manager():
    """The job manager is a per-process resource; each test has its own CZB_HOME, so drop the old one."""
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    from pages.common import job_manager

    job_manager().shutdown(timeout=5)
    st.cache_resource.clear()


def page(name: str, **query) -> AppTest:
    """The app (with its navigation, which page links need) switched to `pages/<name>.py`."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    return at.switch_page(f"pages/{name}.py").run()
