"""Production error handling: an unexpected exception becomes a request id for the user and a logged
traceback for the admin; Streamlit's control flow (stop, rerun, switch_page) passes through untouched."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from czb_core.service.workspace import Workspace
from tests.helpers.apptest import fresh_manager  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("fresh_manager")
ROOT = Path(__file__).resolve().parents[2]
REQUEST_ID = re.compile(r"Something went wrong \(request id ([0-9a-f]{8})\); quote it to your admin")


def open_app(**query) -> AppTest:
    """app.py itself at its default page (the Dataset page): navigation, account panel and error guard.

    (`page()` switches to a page file, which Streamlit runs without app.py while a folder named `pages`
    sits beside it and no run has called `st.navigation` yet.)
    """
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


@pytest.fixture
def error_details(request):
    """Set client.showErrorDetails for one test (the repo's config.toml keeps details on)."""
    before = st.get_option("client.showErrorDetails")
    st.set_option("client.showErrorDetails", request.param)
    yield request.param
    st.set_option("client.showErrorDetails", before)


@pytest.fixture
def failing_page(small_h5ad, monkeypatch):
    """The Dataset page of a real dataset, with a call inside it failing on a server-side detail."""
    def fail(header):
        raise RuntimeError("cannot read /srv/secret/layout")

    monkeypatch.setattr("czb_core.schema.data_manager.detect_organism_of", fail)
    return Workspace().add_file(small_h5ad).id


@pytest.mark.parametrize("error_details", ["none"], indirect=True)
def test_an_unexpected_error_shows_a_request_id_and_logs_the_traceback(error_details, failing_page, caplog):
    with caplog.at_level(logging.ERROR, logger="czb_studio.errors"):
        at = open_app(dataset=failing_page)
    assert not at.exception
    assert at.sidebar.caption[0].value.startswith("Single local user")  # app.py ran: the guard was in the path
    (shown,) = [e.value for e in at.error if REQUEST_ID.search(e.value)]
    assert "secret" not in shown and "RuntimeError" not in shown
    request_id = REQUEST_ID.search(shown).group(1)
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info[0] is RuntimeError and "/srv/secret/layout" in caplog.text
    assert "Traceback" in caplog.text


@pytest.mark.parametrize("error_details", ["full"], indirect=True)
def test_with_details_on_the_exception_reaches_streamlit(error_details, failing_page):
    at = open_app(dataset=failing_page)
    assert at.exception and "/srv/secret/layout" in at.exception[0].message
    assert not any(REQUEST_ID.search(e.value) for e in at.error)


def _rerun_then_stop_app():
    import streamlit as st

    from pages.errors import run_guarded

    def body():
        st.session_state.runs = st.session_state.get("runs", 0) + 1
        if st.session_state.runs == 1:
            st.rerun()
        st.write(f"run {st.session_state.runs}")
        st.stop()
        st.write("after stop")

    run_guarded(body)


@pytest.mark.parametrize("error_details", ["none"], indirect=True)
def test_rerun_and_stop_pass_through_the_guard(error_details):
    at = AppTest.from_function(_rerun_then_stop_app).run()
    assert not at.error and not at.exception
    assert [m.value for m in at.markdown] == ["run 2"]


def _switching_app():
    import streamlit as st

    from pages.errors import run_guarded

    def first():
        st.write("first page")
        st.switch_page(pages[1])

    def second():
        st.write("second page")

    pages = [st.Page(first, title="first", default=True), st.Page(second, title="second")]
    run_guarded(st.navigation(pages).run)


@pytest.mark.parametrize("error_details", ["none"], indirect=True)
def test_switch_page_passes_through_the_guard(error_details):
    at = AppTest.from_function(_switching_app).run()
    assert not at.error and not at.exception
    assert [m.value for m in at.markdown] == ["second page"]
