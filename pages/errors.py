"""Unexpected errors in production: the traceback goes to the server log, the user gets a request id.

With `client.showErrorDetails = "none"` (`make serve`) Streamlit itself shows only a generic sentence,
which leaves the admin nothing to search the log for. `run_guarded` logs the exception with its traceback
under a short random id and tells the user that id. With details shown (a developer's machine) the
exception propagates and Streamlit prints it as usual.

`st.stop()`, `st.rerun()` and `st.switch_page()` work by raising Streamlit's control-flow exceptions;
they derive from BaseException, so catching `Exception` lets them through untouched.
"""

from __future__ import annotations

import logging
import secrets
from typing import Callable

import streamlit as st

log = logging.getLogger("czb_studio.errors")
HIDDEN_DETAILS = ("none", "type")  # the settings under which Streamlit shows no traceback


def details_hidden() -> bool:
    """True when the server is configured to keep tracebacks away from users."""
    return str(st.get_option("client.showErrorDetails")).lower() in HIDDEN_DETAILS


def new_request_id() -> str:
    """Eight hex digits: short enough to read out over the phone, random enough not to collide in a log."""
    return secrets.token_hex(4)


def user_message(request_id: str) -> str:
    return f"Something went wrong (request id {request_id}); quote it to your admin."


def run_guarded(run: Callable[[], object]) -> None:
    """Run one page; an unexpected exception is logged with a request id and shown as that id only."""
    try:
        run()
    except Exception:
        if not details_hidden():
            raise
        request_id = new_request_id()
        log.exception("request %s failed", request_id)
        st.error(user_message(request_id), icon="🚨")
