"""Who a visitor is, and where the app may listen given how visitors are told apart.

With login configured (an `[auth]` section in .streamlit/secrets.toml) each visitor logs in and owns what
they upload and run. Without it every visitor is the same user (`CZB_USER`) and sees, and can delete, every
dataset: that is safe only when nobody else can reach the app. So `make serve` (production) starts only
with login configured, or with `CZB_SINGLE_USER=1`, which says "one person, on this machine" and listens
on the loopback address only; `python -m czb_core.service.identity` is that check and prints the address
to listen on. `make run` (the developer's demo) is neither and stays one local user, as the sidebar says.

A logged-in user is named by the e-mail the identity provider sends, so that e-mail must be one the provider
has verified: a provider that lets anyone register any address would otherwise hand a colleague's datasets
to whoever registered the colleague's address first. A provider that does not send `email_verified` is
trusted to send only verified addresses.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from typing import Any, Optional

from czb_core.config import get_settings
from czb_core.errors import ConfigError

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
SINGLE_USER_NOTE = ("Single user on this machine (CZB_SINGLE_USER=1): no login; only reachable from this "
                    "machine")
NO_LOGIN_NOTE = ("Single local user (no login configured): whoever can open this address sees and can "
                 "delete these datasets")
NO_LOGIN_REFUSAL = (
    "No login is configured, so every visitor would be the same user and see (and delete) everyone's "
    "datasets. Configure login: an [auth] section in .streamlit/secrets.toml (README, 'Login'); or, for one "
    "person on this machine only, set CZB_SINGLE_USER=1 (the app then listens on 127.0.0.1 only).")
BOTH_SET = ("CZB_SINGLE_USER=1 (no login) and an [auth] section in .streamlit/secrets.toml (login) are both "
            "set: remove one of them.")


def is_loopback(host: Optional[str]) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, "localhost"); None or "" (which
    Streamlit takes for every interface) is not."""
    if not host:
        return False
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def serving_problem(login_configured: bool, address: Optional[str]) -> Optional[str]:
    """Why the app must not serve as configured, or None. Without login and without `CZB_SINGLE_USER=1` the
    app serves one local user on any address (`make run`); `serve_address` is stricter for production."""
    if not get_settings().single_user:
        return None
    if login_configured:
        return BOTH_SET
    if not is_loopback(address):
        where = f"on {address}" if address else "on every interface"
        return (f"CZB_SINGLE_USER=1 means only this machine can reach the app, but it listens {where}: "
                f"start it with `make serve`, which listens on {LOOPBACK}, or configure login instead.")
    return None


def serve_address(login_configured: bool, host: Optional[str]) -> str:
    """The address `make serve` listens on, from `CZB_HOST` (`host`); raises ConfigError where it must not
    start: no login and no `CZB_SINGLE_USER=1`, or a single user on an address other machines reach."""
    host = (host or "").strip()
    if not get_settings().single_user:
        if not login_configured:
            raise ConfigError(NO_LOGIN_REFUSAL)
        return host or ALL_INTERFACES
    if login_configured:
        raise ConfigError(BOTH_SET)
    if host and not is_loopback(host):
        raise ConfigError(
            f"CZB_SINGLE_USER=1 means only this machine can reach the app, but CZB_HOST={host} lets other "
            f"machines reach it: unset CZB_HOST (the app then listens on {LOOPBACK}), or configure login. "
            "In a container, configure login: its 127.0.0.1 is reachable from inside the container only.")
    return host or LOOPBACK


def login_refusal(claims: Mapping[str, Any]) -> Optional[str]:
    """Why a logged-in user is not let in, or None: the provider said the e-mail is not verified
    (`email_verified` false, as a boolean or as the text some providers send)."""
    verified = claims.get("email_verified")
    if verified is False or (isinstance(verified, str) and verified.strip().lower() == "false"):
        email = claims.get("email") or "your e-mail address"
        return (f"Your identity provider has not verified {email}, and the app tells users apart by verified "
                "e-mail. Verify it with your provider (or log in with another account), then log in again.")
    return None


def login_owner(claims: Mapping[str, Any]) -> str:
    """The owner name of a logged-in user: the e-mail in lower case, else the provider's subject id."""
    return str(claims.get("email") or claims.get("sub")).strip().lower()


def login_configured() -> bool:
    """Whether Streamlit's secrets (.streamlit/secrets.toml here or in the home folder) have an [auth]
    section, read as the app reads them."""
    import streamlit as st  # only this check reads Streamlit's secrets; the CLI and workers never need it

    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets.toml at all
        return False


def main() -> int:
    """`make serve`'s check: print the address to listen on, or say why the app must not start (exit 1)."""
    try:
        address = serve_address(login_configured(), os.environ.get("CZB_HOST"))
    except ConfigError as exc:
        print(f"czb: not starting: {exc}", file=sys.stderr)
        return 1
    if get_settings().single_user:
        print(f"czb: {SINGLE_USER_NOTE}; listening on {address}", file=sys.stderr)
    print(address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
