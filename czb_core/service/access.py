"""Who may see what: every dataset, job, result and download belongs to its owner.

Callers on behalf of a user pass `owner_scope(user)`: the user's own name, or None for an admin
(`CZB_ADMINS`), who sees everything. Items of other owners are "not found", never "forbidden": a URL
with someone else's dataset hash or job id must not confirm that it exists. Internal callers (workers,
the scorer) pass no scope.
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
