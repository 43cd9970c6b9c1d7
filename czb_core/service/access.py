"""Who may see what: every dataset, job, result and download belongs to its owner.

Callers on behalf of a user pass `owner_scope(user)`: the user's own name, or None for an admin
(`CZB_ADMINS`), who sees everything. Items of other owners are "not found", never "forbidden": a URL
with someone else's dataset hash or job id must not confirm that it exists. Internal callers (workers,
the scorer) pass no scope. The weights cache is shared by all: `may_manage_weights` says who may change it.
"""

from __future__ import annotations

from typing import Optional

from czb_core.config import get_settings


def is_admin(user: str) -> bool:
    return user.strip().lower() in get_settings().admins


def owner_scope(user: str) -> Optional[str]:
    """The owner filter for `user`'s requests: their own items, or everything for an admin."""
    return None if is_admin(user) else user


def visible(owner: str, scope: Optional[str]) -> bool:
    return scope is None or owner == scope


def may_manage_weights(user: str, *, login_required: bool) -> bool:
    """Who may download or import weights: the cache is shared, and an import vouches for the files (a run
    unpickles what an admin imported as it would the configured source's bytes).

    With login (`login_required`: the app makes every visitor log in) only the admins (`CZB_ADMINS`) may,
    and nobody while no admin is named: every account is someone else's, not the server's operator. Without
    login the app has one local user, the person who started it, who may unless admins are named and that
    user is not one of them."""
    if login_required:
        return is_admin(user)
    return not get_settings().admins or is_admin(user)
