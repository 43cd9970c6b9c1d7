"""Whether a file is still the one that was hashed: size, modification time, inode and a hash of its edges.

A dataset registered by server path stays where the lab keeps it, so it can be edited, replaced or
truncated after it was hashed. Jobs, cached results and the PCA baseline are keyed by the content hash,
so a changed file must never be read under its old hash. Re-hashing a file of many GB before every read
is too slow; comparing this identity costs one `stat` and two 1 MB reads. When any part differs the
caller re-hashes the whole file (a `touch` or a copy back keeps the content, and is accepted then).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

EDGE_BYTES = 1 << 20


@dataclass(frozen=True)
class FileIdentity:
    size: int
    mtime_ns: int
    inode: int
    edges_sha256: str  # sha256 of the first and the last EDGE_BYTES (the whole file when smaller)

    @classmethod
    def of(cls, path: str | Path) -> "FileIdentity":
        """The identity of `path` now; OSError when it cannot be read."""
        with open(path, "rb") as fh:
            stat = os.fstat(fh.fileno())
            digest = hashlib.sha256(fh.read(EDGE_BYTES))
            if stat.st_size > EDGE_BYTES:
                fh.seek(max(EDGE_BYTES, stat.st_size - EDGE_BYTES))
                digest.update(fh.read(EDGE_BYTES))
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino, digest.hexdigest())

    def to_columns(self) -> dict:
        """The record columns that keep it (`size_bytes` is the record's size too)."""
        return {"size_bytes": self.size, "mtime_ns": self.mtime_ns, "inode": self.inode,
                "edges_sha256": self.edges_sha256}

    @classmethod
    def from_columns(cls, row) -> Optional["FileIdentity"]:
        """The identity kept in a record's columns; None for a record kept before identities were."""
        values = {name: row[name] for name in ("size_bytes", "mtime_ns", "inode", "edges_sha256")}
        if any(v is None for v in values.values()):
            return None
        return cls(values["size_bytes"], values["mtime_ns"], values["inode"], values["edges_sha256"])
